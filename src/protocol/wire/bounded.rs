//! Lists of a request are read element by element under two caps, so a large body cannot
//! make a large heap: no list holds more than [`MAX_LIST`] entries, and one request holds at
//! most [`MAX_ENTRIES`] list entries in all (nested lists count too). Strings are capped at
//! [`MAX_TEXT`] bytes.

use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};
use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

/// Entries one list may hold (a real 100k-entry sync fits twice).
pub const MAX_LIST: usize = 200_000;
/// List entries one request may hold in all.
pub const MAX_ENTRIES: usize = 400_000;

thread_local! {
    static LEFT: Cell<usize> = const { Cell::new(MAX_ENTRIES) };
}

/// Runs `f` (one request's deserialization) with a fresh budget of [`MAX_ENTRIES`].
pub fn with_budget<R>(f: impl FnOnce() -> R) -> R {
    let saved = LEFT.with(|l| l.replace(MAX_ENTRIES));
    let r = f();
    LEFT.with(|l| l.set(saved));
    r
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for ListVisitor<T> {
    type Value = Option<Vec<T>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element()? {
            if out.len() == MAX_LIST {
                return Err(serde::de::Error::custom(format!(
                    "more than {MAX_LIST} entries"
                )));
            }
            // Read after the element: nested lists inside it have taken their share.
            let left = LEFT.with(Cell::get);
            if left == 0 {
                return Err(serde::de::Error::custom(format!(
                    "the request holds more than {MAX_ENTRIES} list entries in all"
                )));
            }
            LEFT.with(|l| l.set(left - 1));
            out.push(v);
        }
        out.shrink_to_fit();
        Ok(Some(out))
    }
}

/// Bytes one string of a request may hold (the longest real ones are a few hundred).
pub const MAX_TEXT: usize = 64 * 1024;

fn check_len<E: serde::de::Error>(v: &str) -> Result<String, E> {
    if v.len() > MAX_TEXT {
        Err(E::custom(format!(
            "a string of {} bytes is too long (at most {MAX_TEXT})",
            v.len()
        )))
    } else {
        Ok(v.to_owned())
    }
}

struct TextVisitor;

impl<'de> Visitor<'de> for TextVisitor {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
        check_len(v).map(Some)
    }
}

/// `#[serde(deserialize_with)]` of an optional string of at most [`MAX_TEXT`] bytes
/// (checked before it is copied): absent or null is `None`.
pub fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_option(TextVisitor)
}

/// A string element of a list, at most [`MAX_TEXT`] bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_str(TextVisitor)? {
            Some(s) => Ok(Text(s)),
            None => Err(serde::de::Error::custom("null is not a string")),
        }
    }
}

/// `#[serde(deserialize_with)]` of an optional list: absent or null is `None`.
pub fn list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Vec<T>>, D::Error> {
    d.deserialize_option(ListVisitor(PhantomData))
}
