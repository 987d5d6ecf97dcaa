//! Validated resource names and folders (PROTOCOL §5). A value of these types
//! is always valid, so nothing downstream can build a path or an S3 key from
//! unchecked input.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("file name must be 1 to 200 bytes of A-Z a-z 0-9 . _ - and not '.' or '..'")]
    BadFileName,
    #[error(
        "folder must be a valid S3 bucket name: 3 to 63 of a-z 0-9 . -, starting and ending with a letter or digit, no '..', not an IP address"
    )]
    BadFolder,
}

/// A resource file name: 1–200 bytes of `A-Z a-z 0-9 . _ -`, not `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(String);

pub const RESOURCE_NAME_MAX: usize = 200;

impl ResourceName {
    pub fn parse(name: &str) -> Result<Self, NameError> {
        let ok = (1..=RESOURCE_NAME_MAX).contains(&name.len())
            && name != "."
            && name != ".."
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(NameError::BadFileName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The small part's file name at the API (`{name}.small`).
    pub fn small_part_name(&self) -> String {
        format!("{}.small", self.0)
    }

    /// The big part's object key in the CDN (`{name}.big`).
    pub fn big_part_key(&self) -> String {
        format!("{}.big", self.0)
    }
}

/// A folder: a valid S3 bucket name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Folder(String);

impl Folder {
    pub fn parse(folder: &str) -> Result<Self, NameError> {
        let bytes = folder.as_bytes();
        let edge_ok =
            |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok = (3..=63).contains(&bytes.len())
            && bytes
                .iter()
                .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && !folder.contains("..")
            && !looks_like_ipv4(folder);
        if ok {
            Ok(Self(folder.to_owned()))
        } else {
            Err(NameError::BadFolder)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn looks_like_ipv4(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 4
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Folder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_names_table() {
        let long_ok = "a".repeat(200);
        let long_bad = "a".repeat(201);
        for (name, ok) in [
            ("model.onnx", true),
            ("A-b_c.9", true),
            (long_ok.as_str(), true),
            ("...", true),
            ("", false),
            (".", false),
            ("..", false),
            ("a/b", false),
            ("../etc", false),
            ("a b", false),
            ("naïve", false),
            ("a\0b", false),
            ("a\\b", false),
            (long_bad.as_str(), false),
        ] {
            assert_eq!(ResourceName::parse(name).is_ok(), ok, "{name:?}");
        }
    }

    #[test]
    fn folders_table() {
        for (folder, ok) in [
            ("models", true),
            ("abc", true),
            ("my.bucket-1", true),
            ("1.2.3.4x", true),
            ("ab", false),
            ("", false),
            ("Models", false),
            ("-abc", false),
            ("abc-", false),
            ("a..b", false),
            ("192.168.1.1", false),
            ("a_b", false),
            ("a/b", false),
            (&"a".repeat(64), false),
        ] {
            assert_eq!(Folder::parse(folder).is_ok(), ok, "{folder:?}");
        }
    }

    proptest! {
        #[test]
        fn a_valid_name_never_contains_a_path_separator(name in "\\PC{0,64}") {
            if let Ok(n) = ResourceName::parse(&name) {
                prop_assert!(!n.as_str().contains('/') && !n.as_str().contains('\\'));
                prop_assert!(n.as_str() != "." && n.as_str() != "..");
            }
            if let Ok(f) = Folder::parse(&name) {
                prop_assert!(!f.as_str().contains('/') && !f.as_str().contains(".."));
            }
        }
    }
}

/// Names and folders from arbitrary text: exactly the documented alphabet and lengths.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 512, failure_persistence: None, ..proptest::test_runner::Config::default() })]

        #[test]
        fn resource_names_accept_exactly_the_documented_alphabet_and_lengths(name in prop_oneof![
            "\\PC{0,12}",
            "[A-Za-z0-9._-]{0,12}",
            "[A-Za-z0-9._/\\\\ %-]{190,210}",
            prop::sample::select(vec![".", "..", "...", "a", "-", "_", "a.b"]).prop_map(str::to_owned),
        ]) {
            let documented = (1..=200).contains(&name.len())
                && name != "."
                && name != ".."
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            match ResourceName::parse(&name) {
                Ok(parsed) => {
                    prop_assert!(documented, "accepted {name:?}");
                    prop_assert_eq!(parsed.as_str(), name.as_str());
                }
                Err(e) => {
                    prop_assert!(!documented, "refused {name:?}");
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }

        #[test]
        fn folders_accepted_are_always_valid_bucket_names(folder in prop_oneof![
            "\\PC{0,12}",
            "[a-z0-9.-]{0,70}",
            "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,4}",
            "[a-zA-Z0-9._/ -]{2,8}",
        ]) {
            if let Ok(parsed) = Folder::parse(&folder) {
                let b = folder.as_bytes();
                prop_assert_eq!(parsed.as_str(), folder.as_str());
                prop_assert!((3..=63).contains(&b.len()), "{folder:?}");
                prop_assert!(b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-'), "{folder:?}");
                prop_assert!(b[0].is_ascii_alphanumeric() && b[b.len() - 1].is_ascii_alphanumeric(), "{folder:?}");
                prop_assert!(!folder.contains(".."), "{folder:?}");
                prop_assert!(folder.parse::<std::net::Ipv4Addr>().is_err(), "{folder:?}");
                prop_assert!(!folder.contains('/') && !folder.contains('\\'), "{folder:?}");
            }
        }
    }
}
