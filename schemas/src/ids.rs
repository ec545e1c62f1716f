//! Identifiers that travel in clear in envelope headers and log keys.
//!
//! They are restricted to a small ASCII alphabet so they are safe in object
//! store paths (`tenant=<id>`), Kafka keys (`tenant/device`) and HKDF info
//! strings without escaping.

use std::fmt;

/// Longest tenant id, in bytes (fits a DNS label, so it can name buckets).
pub const MAX_TENANT_ID_LEN: usize = 63;
/// Longest employee or device id, in bytes.
pub const MAX_SUBJECT_ID_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} id is empty")]
    Empty { kind: &'static str },
    #[error("{kind} id is {len} bytes, longer than {max}")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{kind} id contains a character outside {alphabet}")]
    BadCharacter {
        kind: &'static str,
        alphabet: &'static str,
    },
}

fn check(
    kind: &'static str,
    value: &str,
    max: usize,
    alphabet: &'static str,
    allowed: impl Fn(usize, u8) -> bool,
) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            kind,
            len: value.len(),
            max,
        });
    }
    if !value.bytes().enumerate().all(|(i, b)| allowed(i, b)) {
        return Err(IdError::BadCharacter { kind, alphabet });
    }
    Ok(())
}

fn subject_byte(_: usize, b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'@')
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $alphabet:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        // Deserializing checks the same rules as `new`.
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl $name {
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check($kind, &value, $max, $alphabet, $allowed)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A tenant: lowercase letters, digits and `-`, starting with a letter or digit.
    TenantId,
    "tenant",
    MAX_TENANT_ID_LEN,
    "[a-z0-9-] (first [a-z0-9])",
    |i, b| b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && b == b'-')
);
id_type!(
    /// An employee, as the tenant's directory names them.
    EmployeeId,
    "employee",
    MAX_SUBJECT_ID_LEN,
    "[A-Za-z0-9._:@-]",
    subject_byte
);
id_type!(
    /// A device (one agent installation) of an employee.
    DeviceId,
    "device",
    MAX_SUBJECT_ID_LEN,
    "[A-Za-z0-9._:@-]",
    subject_byte
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_path_safe() {
        assert!(TenantId::new("acme-eu-1").is_ok());
        assert!(TenantId::new("-acme").is_err());
        assert!(TenantId::new("Acme").is_err());
        assert!(TenantId::new("a/b").is_err());
        assert!(TenantId::new("").is_err());
        assert!(TenantId::new("a".repeat(64)).is_err());
    }

    #[test]
    fn deserializing_checks_the_rules() {
        let ok: TenantId = serde_json::from_str(r#""acme""#).unwrap();
        assert_eq!(ok.as_str(), "acme");
        assert!(serde_json::from_str::<TenantId>(r#""../etc""#).is_err());
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#""acme""#);
    }

    #[test]
    fn subject_ids_exclude_separators() {
        assert!(EmployeeId::new("e-1042").is_ok());
        assert!(DeviceId::new("3f2a:laptop.win").is_ok());
        assert!(DeviceId::new("a/b").is_err());
        assert!(EmployeeId::new("a b").is_err());
        assert!(EmployeeId::new("é").is_err());
    }
}
