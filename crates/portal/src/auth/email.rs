//! Email one-time codes (SPEC F1): 8 digits, an Argon2 hash to check them
//! against (and the code sealed under the portal's key, to send the same
//! code again), valid 15 minutes, single use; sent over SMTP (`lettre`), or
//! logged when the portal runs in development mail mode.
//!
//! Wrong codes are counted across codes, per address and per (address,
//! source network), and lock with exponential waits (security review M6):
//!
//! * One network (an IPv4 address, an IPv6 /64) gets 3 wrong codes for an
//!   address, then waits 15 minutes, then 30, 60, ... up to a day per wrong
//!   code; a code lives 15 minutes, so one network never gets more than 3
//!   tries at any one code. A right code from that network clears its count.
//! * The address as a whole gets 100 wrong codes from all networks, then the
//!   same doubling waits. That bounds an attacker with any number of networks
//!   to about 100 guesses every two days (a chance of about 2e-4 a year
//!   against 10^8 codes); getting there takes some 34 networks within a
//!   quarter of an hour, or a dozen over a day.
//!
//! Why this split: the code is in the victim's mailbox, so an attacker's
//! wrong guesses must not spend the victim's tries. They do not: the
//! attacker's guesses lock the attacker's network, not the code (it stays
//! valid, and asking again resends the same code instead of replacing it), so
//! the victim, on another network, signs in with the code they got. Only the
//! address-wide cap, which needs many networks, can stop a victim; it is the
//! price of bounding the guesses of a distributed attacker. Behind a reverse
//! proxy every browser comes from the proxy's address (review M7), and the
//! per-network count then is per address.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::token::{RandomError, random_bytes};
use crate::store::sign_in::GuessLimit;

/// How long a code works.
pub const CODE_LIFETIME_MS: i64 = 15 * 60 * 1000;
/// Asking for a code resends the pending one while it has this long left.
pub const RESEND_MIN_LEFT_MS: i64 = 5 * 60 * 1000;
/// Wrong tries one network gets for one address before it waits.
pub const ATTEMPTS: i64 = 3;
const CODE_DIGITS: usize = 8;
const DAY_MS: i64 = 24 * 3600 * 1000;

/// Wrong codes for one address from one source network.
pub(crate) const SOURCE_LIMIT: GuessLimit = GuessLimit {
    free: ATTEMPTS,
    // At least a code's lifetime: 3 tries per network at any one code.
    first_lock_ms: CODE_LIFETIME_MS,
    max_lock_ms: DAY_MS,
    forget_after_ms: 2 * DAY_MS,
};

/// Wrong codes for one address from all networks together.
pub(crate) const ADDRESS_LIMIT: GuessLimit = GuessLimit {
    free: 100,
    first_lock_ms: CODE_LIFETIME_MS,
    max_lock_ms: DAY_MS,
    forget_after_ms: 2 * DAY_MS,
};

/// A fresh code: 8 decimal digits (26.6 bits; with 3 tries a guess wins
/// with probability 3e-8, and new codes are rate limited).
pub fn new_code() -> Result<String, RandomError> {
    let mut code = String::with_capacity(CODE_DIGITS);
    while code.len() < CODE_DIGITS {
        let mut byte = [0u8; 1];
        random_bytes(&mut byte)?;
        // Rejection sampling keeps the digits uniform.
        if byte[0] < 250 {
            code.push(char::from(b'0' + byte[0] % 10));
        }
    }
    Ok(code)
}

/// What users type may carry spaces or dashes ("1234 5678").
pub fn normalize_code(typed: &str) -> String {
    typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .collect()
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash the code: {0}")]
pub struct HashError(String);

pub fn hash_code(code: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(code.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

pub fn verify_code(code: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(code.as_bytes(), hash)
        .is_ok()
}

/// Checks `code` against `hash`, or, with no pending code, against a dummy
/// hash made the same way and answers false: the same Argon2 work either way,
/// so the time of an answer does not tell whether the address has a code
/// (or a user).
pub fn verify_or_pretend(code: &str, hash: Option<&str>) -> bool {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| {
        hash_code("not a code").unwrap_or_else(|error| {
            tracing::warn!(%error, "cannot make the dummy code hash");
            String::new()
        })
    });
    // Overlong input is never a code: checked against the dummy, in bounded
    // time.
    match hash.filter(|_| code.len() <= 64) {
        Some(hash) => verify_code(code, hash),
        None => {
            let bounded: String = code.chars().take(64).collect();
            let _ = verify_code(&bounded, dummy);
            false
        }
    }
}

/// Where codes go.
#[derive(Clone)]
pub enum Mailer {
    /// Development mode: the code is logged (and the portal said so at start).
    Log,
    Smtp {
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error(
        "bad --smtp-url: {0} (use smtp://HOST:PORT, smtp://USER:PASS@HOST:587?tls=required or smtps://HOST:465)"
    )]
    Url(String),
    #[error(
        "the SMTP password is given twice, in --smtp-url and in --smtp-password-file or \
         POSTERN_SMTP_PASSWORD; keep only the latter (the URL shows in ps)"
    )]
    PasswordTwice,
    #[error("an SMTP password needs a user in --smtp-url (smtp://USER@HOST:587?tls=required)")]
    PasswordWithoutUser,
    #[error("bad --smtp-from {0:?}: use an address such as \"Postern <postern@example.com>\"")]
    From(String),
    #[error("cannot build the message: {0}")]
    Message(String),
    #[error("the SMTP server refused or failed: {0}")]
    Send(String),
}

/// Whether an SMTP URL carries a password (which shows in `ps` when it is
/// given on the command line).
pub fn smtp_url_has_password(url: &str) -> bool {
    url::Url::parse(url).is_ok_and(|url| url.password().is_some())
}

/// `url` with `password` put in, for a URL that has a user and no password.
fn with_password(url: &str, password: &str) -> Result<String, MailError> {
    let mut parsed = url::Url::parse(url).map_err(|e| MailError::Url(e.to_string()))?;
    if parsed.password().is_some() {
        return Err(MailError::PasswordTwice);
    }
    if parsed.username().is_empty() {
        return Err(MailError::PasswordWithoutUser);
    }
    // Percent-encoded here, decoded by lettre: any password goes through.
    parsed
        .set_password(Some(password))
        .map_err(|()| MailError::Url("it cannot carry a password".into()))?;
    Ok(parsed.into())
}

impl Mailer {
    /// Mails through the SMTP server at `url`; `password` (from a file or the
    /// environment) is for a `url` with a user and no password.
    pub fn smtp(url: &str, password: Option<&str>, from: &str) -> Result<Mailer, MailError> {
        let url = match password {
            Some(password) => with_password(url, password)?,
            None => url.to_string(),
        };
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            .map_err(|e| MailError::Url(e.to_string()))?
            .build();
        let from = from
            .parse::<Mailbox>()
            .map_err(|_| MailError::From(from.to_string()))?;
        Ok(Mailer::Smtp {
            transport: Box::new(transport),
            from,
        })
    }

    /// Sends (or logs) `code` for a sign-in to `account_slug`.
    pub async fn send_code(
        &self,
        to: &str,
        account_slug: &str,
        code: &str,
    ) -> Result<(), MailError> {
        match self {
            Mailer::Log => {
                tracing::info!(
                    email = to,
                    account = account_slug,
                    code,
                    "development mail mode: sign-in code (no --smtp-url set)"
                );
                Ok(())
            }
            Mailer::Smtp { transport, from } => {
                let to = to
                    .parse::<Mailbox>()
                    .map_err(|e| MailError::Message(e.to_string()))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject(format!("Your Postern sign-in code: {code}"))
                    .header(ContentType::TEXT_PLAIN)
                    .body(format!(
                        "Your code to sign in to {account_slug} is:\n\n    {code}\n\n\
                         It works once, for 15 minutes. If you did not ask for it, \
                         ignore this message.\n"
                    ))
                    .map_err(|e| MailError::Message(e.to_string()))?;
                transport
                    .send(message)
                    .await
                    .map(|_| ())
                    .map_err(|e| MailError::Send(e.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_from_elsewhere_goes_into_a_url_without_one() {
        let url = with_password("smtp://mailer@mail.test:587?tls=required", "p@ss:/word%").unwrap();
        let parsed = url::Url::parse(&url).unwrap();
        assert_eq!(parsed.username(), "mailer");
        assert_eq!(
            percent_encoding_free(parsed.password().unwrap()),
            "p@ss:/word%"
        );
        assert_eq!(parsed.query(), Some("tls=required"));
        assert!(smtp_url_has_password(&url));
        assert!(!smtp_url_has_password("smtp://mailer@mail.test:587"));
        assert!(matches!(
            with_password("smtp://mailer:inline@mail.test", "p"),
            Err(MailError::PasswordTwice)
        ));
        assert!(matches!(
            with_password("smtp://mail.test:25", "p"),
            Err(MailError::PasswordWithoutUser)
        ));
        assert!(Mailer::smtp("smtp://mailer@mail.test:25", Some("p"), "a@b.test").is_ok());
        assert!(Mailer::smtp("smtp://mailer:x@mail.test:25", Some("p"), "a@b.test").is_err());
    }

    /// What lettre makes of a URL's password.
    fn percent_encoding_free(text: &str) -> String {
        url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned()
    }

    #[test]
    fn codes_are_eight_digits_and_verify_only_themselves() {
        let code = new_code().unwrap();
        assert_eq!(code.len(), 8);
        assert!(code.chars().all(|c| c.is_ascii_digit()));
        let hash = hash_code(&code).unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains(&code));
        assert!(verify_code(&code, &hash));
        let mut wrong = code.clone().into_bytes();
        wrong[0] = if wrong[0] == b'9' { b'0' } else { wrong[0] + 1 };
        assert!(!verify_code(std::str::from_utf8(&wrong).unwrap(), &hash));
        assert!(!verify_code(&code, "not a hash"));
        assert_eq!(normalize_code(" 1234-5678 "), "12345678");
    }

    #[test]
    fn bad_smtp_settings_are_named() {
        assert!(matches!(
            Mailer::smtp("ftp://x", None, "a@b.test"),
            Err(MailError::Url(_))
        ));
        assert!(matches!(
            Mailer::smtp("smtp://127.0.0.1:2525", None, "not an address"),
            Err(MailError::From(_))
        ));
    }
}
