//! Email one-time codes (SPEC F1): 8 digits, only an Argon2 hash stored,
//! valid 15 minutes, 3 attempts, single use; sent over SMTP (`lettre`), or
//! logged when the portal runs in development mail mode.

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::token::{RandomError, random_bytes};

/// How long a code works.
pub const CODE_LIFETIME_MS: i64 = 15 * 60 * 1000;
/// Wrong tries before the code is gone.
pub const ATTEMPTS: i64 = 3;
const CODE_DIGITS: usize = 8;

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
    #[error("bad --smtp-from {0:?}: use an address such as \"Postern <postern@example.com>\"")]
    From(String),
    #[error("cannot build the message: {0}")]
    Message(String),
    #[error("the SMTP server refused or failed: {0}")]
    Send(String),
}

impl Mailer {
    pub fn smtp(url: &str, from: &str) -> Result<Mailer, MailError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
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
            Mailer::smtp("ftp://x", "a@b.test"),
            Err(MailError::Url(_))
        ));
        assert!(matches!(
            Mailer::smtp("smtp://127.0.0.1:2525", "not an address"),
            Err(MailError::From(_))
        ));
    }
}
