//! The value types of the settings that read the same from a flag, an
//! environment variable and the TOML file: sizes (`20G`, `512MiB`, or plain
//! bytes, through `bytesize`), durations (`30s`, `2h`, or plain seconds,
//! through `humantime`), comma-separated lists (or TOML arrays), and the
//! listen address and runtime kind by their text.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::{Listen, RuntimeKind};

/// A number of bytes: `1073741824`, `1GiB`, `1G` (10⁹), `512 MiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(bytes) = text.parse::<u64>() {
            return Ok(Self(bytes));
        }
        text.parse::<bytesize::ByteSize>()
            .map(|size| Self(size.as_u64()))
            .map_err(|_| format!("`{text}` is not a size such as 1073741824, 1GiB, 1G or 512MiB"))
    }
}

/// A duration: `30s`, `2h`, `1h 30m`, or plain seconds (`7200`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(pub Duration);

impl FromStr for Secs {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(secs) = text.parse::<u64>() {
            return Ok(Self(Duration::from_secs(secs)));
        }
        humantime::parse_duration(text)
            .map(Self)
            .map_err(|_| format!("`{text}` is not a duration such as 30s, 2h or 7200"))
    }
}

/// Names separated by commas (blanks ignored), or a TOML array of names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct List(pub Vec<String>);

impl FromStr for List {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self(
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

/// Deserializes `T` from a string (through `FromStr`) or, for numbers, from
/// an integer (`Size` and `Secs` accept plain TOML integers).
struct TextOrNumber<T>(std::marker::PhantomData<T>);

impl<T: FromStr<Err = String>> Visitor<'_> for TextOrNumber<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or a non-negative integer")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        v.to_string().parse().map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(format!("{v} is negative")))
            .and_then(|v| self.visit_u64(v))
    }
}

macro_rules! text_serde {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(TextOrNumber::<$ty>(std::marker::PhantomData))
            }
        }
    )*};
}
text_serde!(Size, Secs);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for RuntimeKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        <Self as clap::ValueEnum>::from_str(&text, true)
            .map_err(|_| de::Error::custom(format!("`{text}` is not bollard or cli")))
    }
}

impl<'de> Deserialize<'de> for List {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        match Raw::deserialize(d).map_err(|_| {
            de::Error::custom("expected a comma-separated string or an array of strings")
        })? {
            Raw::One(text) => Ok(text.parse().unwrap_or_default()),
            Raw::Many(items) => Ok(Self(
                items
                    .into_iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_plain_and_human_forms() {
        for (text, bytes) in [
            ("1073741824", 1 << 30),
            ("1GiB", 1 << 30),
            ("1 GiB", 1 << 30),
            ("20G", 20_000_000_000),
            ("512MiB", 512 << 20),
            ("0", 0),
        ] {
            assert_eq!(text.parse::<Size>(), Ok(Size(bytes)), "{text}");
        }
        for text in ["", "-1", "ten", "10 lightyears"] {
            assert!(text.parse::<Size>().is_err(), "{text}");
        }
    }

    #[test]
    fn durations_read_plain_seconds_and_human_forms() {
        for (text, secs) in [("7200", 7200), ("30s", 30), ("2h", 7200), ("1h 30m", 5400)] {
            assert_eq!(
                text.parse::<Secs>(),
                Ok(Secs(Duration::from_secs(secs))),
                "{text}"
            );
        }
        for text in ["", "-5", "soon", "5 parsecs"] {
            assert!(text.parse::<Secs>().is_err(), "{text}");
        }
    }

    #[test]
    fn lists_come_from_commas_or_arrays() {
        assert_eq!(
            " a:1 , ,b:2,".parse::<List>().unwrap().0,
            vec!["a:1", "b:2"]
        );
        let from_toml: std::collections::BTreeMap<String, List> =
            toml::from_str("x = [\"a:1\", \" b:2 \"]\ny = \"c, d\"").unwrap();
        assert_eq!(from_toml["x"].0, vec!["a:1", "b:2"]);
        assert_eq!(from_toml["y"].0, vec!["c", "d"]);
        assert!(toml::from_str::<std::collections::BTreeMap<String, List>>("x = [1, 2]").is_err());
    }

    #[test]
    fn toml_integers_and_strings_both_read_as_sizes_and_durations() {
        #[derive(Deserialize)]
        struct T {
            a: Size,
            b: Size,
            c: Secs,
            d: Secs,
        }
        let t: T = toml::from_str("a = 1000\nb = \"2KiB\"\nc = 30\nd = \"1m\"").unwrap();
        assert_eq!((t.a, t.b), (Size(1000), Size(2048)));
        assert_eq!((t.c.0.as_secs(), t.d.0.as_secs()), (30, 60));
        assert!(toml::from_str::<T>("a = -1\nb = 1\nc = 1\nd = 1").is_err());
    }
}
