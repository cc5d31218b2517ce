//! `postern admin apply` and `postern admin export`: the account's sites,
//! resources, groups and policies as a YAML file (SPEC 7.6), through the
//! portal's `/api/v1/config`, which applies a file in one transaction.

mod yaml;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

use crate::args::AdminConnection;

/// Top-level keys in the order a reader expects them.
const KINDS: [&str; 4] = ["sites", "resources", "groups", "policies"];

struct Portal {
    client: reqwest::Client,
    base: String,
    token: String,
}

/// What the portal answered: its status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl Portal {
    fn new(connection: &AdminConnection) -> anyhow::Result<Portal> {
        let trust = connection.trust.trust_for(&connection.portal)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*trust.tls()).clone())
            .timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Portal {
            client,
            base: format!("{}/api/v1", connection.portal.trim_end_matches('/')),
            token: connection.token.clone(),
        })
    }

    async fn call(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the portal at {}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .context("the portal's answer broke off")?;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status == 401 || status == 403 || status == 429 {
            bail!(
                "the portal refused the token (HTTP {status}): {}",
                detail(&body)
            );
        }
        Ok(Answer { status, body })
    }
}

fn detail(body: &Value) -> String {
    body["detail"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| body.to_string())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

/// One line per change: `+` created, `~` updated (which fields), `-` deleted.
fn diff_lines(changes: &[Value]) -> Vec<String> {
    changes
        .iter()
        .map(|change| {
            let sign = match change["action"].as_str() {
                Some("create") => "+",
                Some("delete") => "-",
                _ => "~",
            };
            let fields = change["fields"]
                .as_array()
                .map(|f| {
                    let names: Vec<&str> = f.iter().filter_map(Value::as_str).collect();
                    format!(" ({})", names.join(", "))
                })
                .unwrap_or_default();
            format!(
                "{sign} {} {}{fields}",
                change["kind"].as_str().unwrap_or("?"),
                change["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

fn tally(changes: &[Value]) -> String {
    let count = |action: &str| changes.iter().filter(|c| c["action"] == action).count();
    format!(
        "{} to create, {} to update, {} to delete",
        count("create"),
        count("update"),
        count("delete")
    )
}

pub fn apply(
    file: &Path,
    prune: bool,
    dry_run: bool,
    connection: &AdminConnection,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed = yaml::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if !parsed.value.is_object() {
        bail!(
            "{}:1: a declaration is a mapping of {}",
            file.display(),
            KINDS.join(", ")
        );
    }
    // A section left out is not a wish to delete everything of its kind.
    if let Some(kind) = KINDS
        .iter()
        .find(|kind| prune && parsed.value.get(**kind).is_none())
    {
        bail!(
            "{}: --prune with no `{kind}:` section would delete every one; write `{kind}: []` \
             if that is meant",
            file.display()
        );
    }
    let portal = Portal::new(connection)?;
    runtime()?.block_on(async {
        let send = |rehearse: bool, plan: &str| {
            let mut url = format!("{}/config?prune={prune}&dry_run={rehearse}", portal.base);
            if !plan.is_empty() {
                url.push_str(&format!("&plan={plan}"));
            }
            portal.call(portal.client.post(url).json(&parsed.value))
        };
        // What would change, shown before it is made.
        let plan = send(true, "").await?;
        if plan.status != 200 {
            let field = plan.body["field"].as_str().unwrap_or("");
            let line = parsed.line_of(field).unwrap_or(1);
            bail!(
                "{}:{line}: {} (HTTP {}; nothing was changed)",
                file.display(),
                detail(&plan.body),
                plan.status
            );
        }
        let planned = plan.body["changes"].as_array().cloned().unwrap_or_default();
        if planned.is_empty() {
            println!("no changes: the account matches {}", file.display());
            return Ok(ExitCode::SUCCESS);
        }
        for line in diff_lines(&planned) {
            println!("{line}");
        }
        if dry_run {
            println!("dry run: {} (nothing was changed)", tally(&planned));
            return Ok(ExitCode::SUCCESS);
        }
        // The apply makes exactly the changes shown, or none.
        let digest = plan.body["plan"].as_str().unwrap_or_default();
        let done = send(false, digest).await?;
        if done.status != 200 {
            bail!(
                "the portal refused the change (HTTP {}): {}; nothing was changed",
                done.status,
                detail(&done.body)
            );
        }
        let made = done.body["changes"].as_array().cloned().unwrap_or_default();
        println!("applied: {}", tally(&made).replace(" to ", " "));
        Ok(ExitCode::SUCCESS)
    })
}

pub fn export(connection: &AdminConnection) -> anyhow::Result<ExitCode> {
    let portal = Portal::new(connection)?;
    runtime()?.block_on(async {
        let answer = portal
            .call(portal.client.get(format!("{}/config", portal.base)))
            .await?;
        if answer.status != 200 {
            bail!(
                "the portal answered HTTP {}: {}",
                answer.status,
                detail(&answer.body)
            );
        }
        let sections: Vec<(&str, &Value)> = KINDS
            .iter()
            .map(|kind| (*kind, &answer.body[*kind]))
            .collect();
        print!(
            "# Postern declaration: `postern admin apply` of this file changes nothing.\n{}",
            yaml::emit(&sections)
        );
        Ok(ExitCode::SUCCESS)
    })
}
