#![allow(clippy::unwrap_used)] // a test file: unwrap is the assertion
//! LDAP directories (issue 18, SPEC 7.3) against a real OpenLDAP `slapd`
//! (Debian's), started by the test on loopback over StartTLS with a
//! certificate from a test CA, holding OpenLDAP people, an Active
//! Directory-shaped user and group (Debian's `msuser.schema`) and a nested
//! group. Needs `slapd` and `ldap-utils` (the CI installs them) and fails
//! loudly without them.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use serde_json::{Value, json};
use support::channel::{Peer, key};
use support::{TempDb, TestApp};

const SUFFIX: &str = "dc=acme,dc=test";
const ADMIN: &str = "cn=admin,dc=acme,dc=test";
const PASSWORD: &str = "s3cret pass";

/// A slapd of the test's own: its configuration, data and process, all
/// removed at drop.
struct Slapd {
    dir: PathBuf,
    child: Child,
    port: u16,
}

fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin"] {
        let path = PathBuf::from(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("this test needs {name}: apt install slapd ldap-utils (the CI does)");
}

impl Slapd {
    fn start(tag: &str, ldif: &str, cert_pem: &str, key_pem: &str) -> Slapd {
        let dir = std::env::temp_dir().join(format!("postern-slapd-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("db")).unwrap();
        std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), key_pem).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema\n\
             include /etc/ldap/schema/cosine.schema\n\
             include /etc/ldap/schema/inetorgperson.schema\n\
             include /etc/ldap/schema/nis.schema\n\
             include /etc/ldap/schema/msuser.schema\n\
             modulepath /usr/lib/ldap\n\
             moduleload back_mdb\n\
             pidfile {dir}/slapd.pid\n\
             TLSCertificateFile {dir}/cert.pem\n\
             TLSCertificateKeyFile {dir}/key.pem\n\
             database mdb\n\
             suffix \"{SUFFIX}\"\n\
             rootdn \"{ADMIN}\"\n\
             rootpw \"{PASSWORD}\"\n\
             directory {dir}/db\n\
             maxsize 10485760\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("slapd.conf"), conf).unwrap();
        std::fs::write(dir.join("data.ldif"), ldif).unwrap();
        let added = Command::new(tool("slapadd"))
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .arg("-l")
            .arg(dir.join("data.ldif"))
            .output()
            .unwrap();
        assert!(
            added.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&added.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(tool("slapd"))
            .arg("-f")
            .arg(dir.join("slapd.conf"))
            .args(["-h", &format!("ldap://127.0.0.1:{port}/"), "-d", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let slapd = Slapd { dir, child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "slapd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        slapd
    }

    fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.port)
    }

    /// Changes the directory as its admins would, with `ldapmodify`.
    fn modify(&self, ldif: &str) {
        use std::io::Write as _;
        let mut child = Command::new(tool("ldapmodify"))
            .args(["-x", "-H", &self.url(), "-D", ADMIN, "-w", PASSWORD])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(ldif.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ldapmodify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A test CA and a server certificate for 127.0.0.1: (CA PEM, cert, key).
fn certificates() -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "Acme test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.distinguished_name
        .push(DnType::CommonName, "ldap.acme.test");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// OpenLDAP people (alice, bob), an Active Directory-shaped user (carol);
/// engineering holds alice and the platform group (bob): nested.
fn data() -> String {
    let ad = "instanceType: 4\nnTSecurityDescriptor: AAAA\n";
    format!(
        "dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: acme\no: Acme\n\n\
         dn: ou=people,{SUFFIX}\nobjectClass: organizationalUnit\nou: people\n\n\
         dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n\n\
         dn: uid=alice,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: alice\ncn: Alice Liddell\n\
         sn: Liddell\ngivenName: Alice\nmail: alice@acme.test\n\n\
         dn: uid=bob,ou=people,{SUFFIX}\nobjectClass: inetOrgPerson\nuid: bob\ncn: Bob Builder\n\
         sn: Builder\nmail: Bob@Acme.test\n\n\
         dn: cn=carol,ou=people,{SUFFIX}\nobjectClass: user\nobjectClass: extensibleObject\ncn: carol\n\
         sn: Jones\ndisplayName: Carol Jones\nsAMAccountName: carol\nuserAccountControl: 512\n\
         mail: carol@acme.test\n{ad}objectCategory: cn=Person,cn=Schema,{SUFFIX}\n\n\
         dn: cn=platform,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: platform\n\
         member: uid=bob,ou=people,{SUFFIX}\n\n\
         dn: cn=engineering,ou=groups,{SUFFIX}\nobjectClass: groupOfNames\ncn: engineering\n\
         member: uid=alice,ou=people,{SUFFIX}\nmember: cn=platform,ou=groups,{SUFFIX}\n\n\
         dn: cn=sales,ou=groups,{SUFFIX}\nobjectClass: group\ncn: sales\ngroupType: -2147483646\n\
         member: cn=carol,ou=people,{SUFFIX}\n{ad}objectCategory: cn=Group,cn=Schema,{SUFFIX}\n"
    )
}

async fn actor_by_email(app: &TestApp, email: &str) -> Option<Value> {
    let actors = app.expect(StatusCode::OK, "GET", "/actors", None).await;
    actors["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["email"] == email)
        .cloned()
}

async fn group_by_name(app: &TestApp, name: &str) -> Value {
    let groups = app.expect(StatusCode::OK, "GET", "/groups", None).await;
    groups["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no group {name}: {groups}"))
}

async fn members(app: &TestApp, group: &Value) -> Vec<String> {
    let id = group["id"].as_str().unwrap();
    let found = app
        .expect(
            StatusCode::OK,
            "GET",
            &format!("/groups/{id}/members"),
            None,
        )
        .await;
    let mut out: Vec<String> = found["actor_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

async fn client_token(app: &TestApp, actor: &str) -> String {
    let minted = postern_portal::auth::token::mint().unwrap();
    let mut tx = app.state.store.write().await.unwrap();
    postern_portal::testing::tokens::insert(
        &mut tx,
        &minted,
        &postern_portal::testing::tokens::NewToken {
            account_id: Some(app.account_id),
            kind: postern_portal::domain::TokenKind::Client,
            actor_id: Some(actor.parse().unwrap()),
            site_id: None,
            identity_provider_id: None,
            expires_at_ms: None,
            read_only: false,
        },
        0,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    minted.token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ldap_directory_syncs_users_nested_groups_changes_and_deletions() {
    let (ca, cert, key_pem) = certificates();
    let slapd = Slapd::start("sync", &data(), &cert, &key_pem);
    let db = TempDb::new("ldap");
    let app = TestApp::open(&db.url(), "acme").await;
    let addr: SocketAddr = app.serve().await;
    let seeded = support::seed(&app).await;
    // The scheduler syncs a directory that never synced at once.
    postern_portal::spawn_directory_sync(app.state.clone());
    let directory = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/directories",
            Some(json!({
                "type": "ldap", "name": "Corp LDAP", "url": slapd.url(),
                "bind_dn": ADMIN, "bind_password": PASSWORD, "base_dn": SUFFIX,
                "starttls": true, "ca_certificate": ca, "interval_secs": 3600,
            })),
        )
        .await;
    assert!(directory.get("bind_password").is_none());
    assert_eq!(directory["token"], Value::Null);
    let id = directory["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    let synced = loop {
        let shown = app
            .expect(StatusCode::OK, "GET", &format!("/directories/{id}"), None)
            .await;
        if !shown["last_sync_at"].is_null() {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduler did not sync: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(synced["last_error"], Value::Null, "{synced}");
    assert_eq!(
        synced["last_sync"],
        json!({
            "users": {"total": 3, "created": 3, "updated": 0, "deleted": 0},
            "groups": {"total": 3, "created": 3, "updated": 0, "deleted": 0},
            "skipped": [],
        })
    );
    assert_eq!(
        (synced["users"].clone(), synced["groups"].clone()),
        (json!(3), json!(3))
    );

    let alice = actor_by_email(&app, "alice@acme.test").await.unwrap();
    let bob = actor_by_email(&app, "bob@acme.test").await.unwrap();
    let carol = actor_by_email(&app, "carol@acme.test").await.unwrap();
    assert_eq!(alice["name"], "Alice Liddell");
    assert_eq!(carol["name"], "Carol Jones");
    assert_eq!(carol["disabled"], false);
    assert_eq!(alice["directory_id"], json!(id));
    let id_of = |a: &Value| a["id"].as_str().unwrap().to_string();
    let engineering = group_by_name(&app, "engineering").await;
    let mut both = vec![id_of(&alice), id_of(&bob)];
    both.sort();
    assert_eq!(
        members(&app, &engineering).await,
        both,
        "nested: platform's bob"
    );
    assert_eq!(
        members(&app, &group_by_name(&app, "platform").await).await,
        vec![id_of(&bob)]
    );
    assert_eq!(
        members(&app, &group_by_name(&app, "sales").await).await,
        vec![id_of(&carol)]
    );

    // A second sync with nothing changed changes nothing.
    let log_before = app
        .expect(StatusCode::OK, "GET", "/audit_log?limit=1", None)
        .await;
    let again = app
        .expect(
            StatusCode::OK,
            "POST",
            &format!("/directories/{id}/sync"),
            None,
        )
        .await;
    assert_eq!(
        again["last_sync"],
        json!({
            "users": {"total": 3, "created": 0, "updated": 0, "deleted": 0},
            "groups": {"total": 3, "created": 0, "updated": 0, "deleted": 0},
            "skipped": [],
        })
    );
    let log_after = app
        .expect(StatusCode::OK, "GET", "/audit_log?limit=1", None)
        .await;
    assert_eq!(
        log_before, log_after,
        "no audit entry for a sync that changed nothing"
    );

    // Bob reaches the resource through engineering, by way of platform.
    app.expect(
        StatusCode::CREATED,
        "POST",
        "/policies",
        Some(json!({"group_id": engineering["id"], "resource_id": seeded.resource})),
    )
    .await;
    let mut gateway = Peer::connect(addr, "/v1/gateway", &seeded.gateway_token, "gw-1", &key(1))
        .await
        .unwrap();
    assert_eq!(gateway.next().await["type"], "init");
    let token = client_token(&app, &id_of(&bob)).await;
    let mut laptop = Peer::connect(addr, "/v1/client", &token, "laptop", &key(2))
        .await
        .unwrap();
    assert_eq!(laptop.next().await["type"], "init");
    laptop
        .send(json!({"type": "request_access", "ref": "a", "resource_id": seeded.resource}))
        .await;
    let authorize = gateway.next_of("authorize").await;
    gateway
        .send(json!({"type": "authorized", "ref": authorize["ref"]}))
        .await;
    assert_eq!(laptop.next_of("access_granted").await["ref"], "a");

    // Changes there: alice renamed, carol disabled the Active Directory
    // way, bob deleted and a new bob made (a new entryUUID, the same
    // name and email: the old one must go before the new one comes).
    slapd.modify(&format!(
        "dn: uid=alice,ou=people,{SUFFIX}\nchangetype: modify\nreplace: cn\ncn: Alice Pleasance Liddell\n\n\
         dn: cn=carol,ou=people,{SUFFIX}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: 514\n\n\
         dn: uid=bob,ou=people,{SUFFIX}\nchangetype: delete\n\n\
         dn: uid=bob,ou=people,{SUFFIX}\nchangetype: add\nobjectClass: inetOrgPerson\nuid: bob\n\
         cn: Bob Newhire\nsn: Newhire\nmail: bob@acme.test\n"
    ));
    let started = Instant::now();
    let after = app
        .expect(
            StatusCode::OK,
            "POST",
            &format!("/directories/{id}/sync"),
            None,
        )
        .await;
    let disconnect = laptop.next_of("disconnect").await;
    let elapsed = started.elapsed();
    assert_eq!(disconnect["reason"], "token_revoked");
    assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
    println!("LDAP sync that deleted bob to his client's disconnect: {elapsed:?}");
    assert_eq!(
        after["last_sync"]["users"],
        json!({"total": 3, "created": 1, "updated": 2, "deleted": 1}),
        "{after}"
    );
    assert_eq!(
        gateway.next_of("revoke").await["resource_id"],
        json!(seeded.resource)
    );
    let new_bob = actor_by_email(&app, "bob@acme.test").await.unwrap();
    assert_ne!(new_bob["id"], bob["id"], "a new entry is a new user");
    assert_eq!(new_bob["name"], "Bob Newhire");
    assert!(
        Peer::connect(addr, "/v1/client", &token, "laptop", &key(2))
            .await
            .is_err(),
        "the old bob's token is gone"
    );
    let alice = actor_by_email(&app, "alice@acme.test").await.unwrap();
    assert_eq!(alice["name"], "Alice Pleasance Liddell");
    assert_eq!(
        actor_by_email(&app, "carol@acme.test").await.unwrap()["disabled"],
        true
    );
    // Membership is by DN: platform still names uid=bob, now the new bob.
    let mut both = vec![id_of(&alice), id_of(&new_bob)];
    both.sort();
    assert_eq!(members(&app, &engineering).await, both);
    let log = app
        .expect(StatusCode::OK, "GET", "/audit_log?limit=50", None)
        .await;
    assert!(
        log["data"].as_array().unwrap().iter().any(|e| {
            e["action"] == "actor.delete"
                && e["directory_id"] == json!(id)
                && e["object_id"] == json!(id_of(&bob))
        }),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_that_cannot_be_reached_or_read_changes_nothing_and_says_why() {
    let (ca, cert, key_pem) = certificates();
    let slapd = Slapd::start("errors", &data(), &cert, &key_pem);
    let db = TempDb::new("ldap-errors");
    let app = TestApp::open(&db.url(), "acme").await;
    let create = async |name: &str, extra: Value| {
        let mut body = json!({
            "type": "ldap", "name": name, "url": slapd.url(), "bind_dn": ADMIN,
            "bind_password": PASSWORD, "base_dn": SUFFIX, "starttls": true, "ca_certificate": ca,
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        app.expect(StatusCode::CREATED, "POST", "/directories", Some(body))
            .await["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // An admin-made user holds carol's email: carol is skipped, and said
    // so; the rest is applied.
    app.expect(
        StatusCode::CREATED,
        "POST",
        "/actors",
        Some(json!({"name": "Carol (admins')", "email": "carol@acme.test", "role": "user"})),
    )
    .await;
    let good = create("good", json!({})).await;
    let synced = app
        .expect(
            StatusCode::OK,
            "POST",
            &format!("/directories/{good}/sync"),
            None,
        )
        .await;
    assert_eq!(synced["last_sync"]["users"]["created"], 2, "{synced}");
    let skipped = synced["last_sync"]["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{synced}");
    assert!(
        skipped[0].as_str().unwrap().starts_with("cn=carol,"),
        "{skipped:?}"
    );
    assert_eq!(synced["users"], 2);
    // Sales had only carol: it exists, empty.
    let sales = group_by_name(&app, "sales").await;
    assert_eq!(members(&app, &sales).await, Vec::<String>::new());
    let state = async || {
        let actors = app.expect(StatusCode::OK, "GET", "/actors", None).await;
        let groups = app.expect(StatusCode::OK, "GET", "/groups", None).await;
        let mut all_members = Vec::new();
        for group in groups["data"].as_array().unwrap() {
            all_members.push(members(&app, group).await);
        }
        (actors, groups, all_members)
    };
    let before = state().await;
    // The good directory, broken: nothing it made changes.
    for (patch, says) in [
        (json!({"bind_password": "nope"}), "cannot bind"),
        (
            json!({"bind_password": PASSWORD, "url": "ldap://127.0.0.1:1"}),
            "cannot connect",
        ),
        (
            json!({"url": slapd.url(), "bind_password": PASSWORD, "user_filter": "(uid=nobody-at-all)"}),
            "found no users",
        ),
        (
            json!({"user_filter": "", "group_filter": "(cn=no-such-group)"}),
            "found no groups",
        ),
    ] {
        app.expect(
            StatusCode::OK,
            "PATCH",
            &format!("/directories/{good}"),
            Some(patch.clone()),
        )
        .await;
        let (status, problem) = app
            .call("POST", &format!("/directories/{good}/sync"), None)
            .await;
        assert_eq!(status, 502, "{patch}: {problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains(says),
            "{patch}: {problem}"
        );
        assert_eq!(state().await, before, "{patch}: nothing changed");
    }
    app.expect(
        StatusCode::OK,
        "PATCH",
        &format!("/directories/{good}"),
        Some(json!({"group_filter": ""})),
    )
    .await;
    app.expect(
        StatusCode::OK,
        "POST",
        &format!("/directories/{good}/sync"),
        None,
    )
    .await;
    assert_eq!(state().await, before, "fixed again: the same as before");

    for (name, extra, says) in [
        (
            "closed port",
            json!({"url": "ldap://127.0.0.1:1"}),
            "cannot connect",
        ),
        (
            "wrong password",
            json!({"bind_password": "nope"}),
            "cannot bind",
        ),
        (
            "untrusted",
            json!({"ca_certificate": null}),
            "cannot connect",
        ),
        (
            "plain",
            json!({"starttls": false, "bind_password": "nope"}),
            "cannot bind",
        ),
        (
            "bad base",
            json!({"base_dn": "dc=nowhere,dc=test"}),
            "cannot search",
        ),
    ] {
        let id = create(name, extra).await;
        let (status, problem) = app
            .call("POST", &format!("/directories/{id}/sync"), None)
            .await;
        assert_eq!(status, 502, "{name}: {problem}");
        let detail = problem["detail"].as_str().unwrap();
        assert!(detail.contains(says), "{name}: {detail}");
        let shown = app
            .expect(StatusCode::OK, "GET", &format!("/directories/{id}"), None)
            .await;
        assert_eq!(shown["last_error"], json!(detail), "{name}");
        assert_eq!(shown["users"], 0);
    }

    // The stored password never follows the directory somewhere new: a
    // new server, bind DN or plain LDAP needs it given again.
    let settled = app
        .expect(StatusCode::OK, "GET", &format!("/directories/{good}"), None)
        .await;
    for patch in [
        json!({"url": "ldap://127.0.0.1:2"}),
        json!({"bind_dn": "cn=someone-else,dc=acme,dc=test"}),
        json!({"starttls": false}),
    ] {
        let (status, problem) = app
            .call(
                "PATCH",
                &format!("/directories/{good}"),
                Some(patch.clone()),
            )
            .await;
        assert_eq!(status, 409, "{patch}: {problem}");
        assert_eq!(problem["field"], "bind_password", "{patch}: {problem}");
    }
    let shown = app
        .expect(StatusCode::OK, "GET", &format!("/directories/{good}"), None)
        .await;
    assert_eq!(shown["ldap"], settled["ldap"], "unchanged");

    // Invalid settings are refused before anything is stored.
    for (field, value) in [
        ("url", json!("http://127.0.0.1:389")),
        ("url", json!("ldap://127.0.0.1:389/dc=acme?uid")),
        ("interval_secs", json!(5)),
        ("ca_certificate", json!("not a certificate")),
        ("user_filter", json!("uid=alice")),
    ] {
        let (status, problem) = app
            .call(
                "PATCH",
                &format!("/directories/{good}"),
                Some(json!({field: value})),
            )
            .await;
        assert_eq!(status, 422, "{field}: {problem}");
    }
    // A SCIM directory has no LDAP settings to sync.
    let scim = app
        .expect(
            StatusCode::CREATED,
            "POST",
            "/directories",
            Some(json!({"type": "scim", "name": "Okta"})),
        )
        .await;
    let (status, _) = app
        .call(
            "POST",
            &format!("/directories/{}/sync", scim["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(status, 409);
}
