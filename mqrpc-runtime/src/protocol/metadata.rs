//! Call metadata (PROTOCOL.md, "Call metadata"): key/value pairs a caller
//! attaches to one call and a handler to its answer, carried as MQTT v5
//! user properties named `md-<key>`. The `md-` namespace cannot collide
//! with mqrpc's own properties (`mqrpc-*`, `traceparent`, `tracestate`).

use std::sync::Arc;

use crate::Error;

/// Prefix of the user properties that carry metadata: the entry
/// `tenant = acme` travels as the user property `md-tenant` = `acme`.
pub const METADATA_PREFIX: &str = "md-";

/// Most entries one call (or one answer) carries: checked by the client
/// before sending, and by the server's default
/// (`ServerOptions::max_metadata`).
pub const MAX_METADATA_ENTRIES: usize = 32;

/// Most bytes of one call's (or answer's) metadata, counted as they travel:
/// each property's name (`md-` and the key) and value. Checked like
/// [`MAX_METADATA_ENTRIES`]. With mqrpc's own properties it stays inside a
/// server's default user-property limits (64 properties, 16 KiB).
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

/// Longest key, in bytes (without the `md-` prefix).
pub const MAX_METADATA_KEY: usize = 128;

/// Key/value metadata of one call or one answer, like tonic's
/// `MetadataMap` or HTTP headers: keys are lowercase ASCII (`a`–`z`,
/// `0`–`9`, `-`, `_`, `.`; 1 to 128 bytes), values any UTF-8 text without
/// U+0000. A key may hold several values ([`append`](Self::append)); the
/// order of entries is kept on the wire.
///
/// Cheap to clone (a reference count); empty metadata allocates nothing.
///
/// ```
/// # use mqrpc_runtime as mqrpc;
/// use mqrpc::Metadata;
/// let mut md = Metadata::new();
/// md.insert("tenant", "acme")?;
/// md.append("x-request-id", "r-1")?;
/// md.insert("tenant", "globex")?; // replaces
/// assert_eq!(md.get("tenant"), Some("globex"));
/// assert_eq!(md.len(), 2);
/// assert!(md.insert("Tenant", "x").is_err()); // keys are lowercase
/// // The same, in one expression:
/// let md = Metadata::from_pairs([("tenant", "acme"), ("token", "s3cret")])?;
/// assert_eq!(md.iter().collect::<Vec<_>>(), [("tenant", "acme"), ("token", "s3cret")]);
/// # Ok::<(), mqrpc::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    entries: Option<Arc<Vec<(String, String)>>>,
}

impl std::fmt::Debug for Metadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

static NO_ENTRIES: Vec<(String, String)> = Vec::new();

impl Metadata {
    /// No entries.
    pub const fn new() -> Metadata {
        Metadata { entries: None }
    }

    /// Metadata of these pairs, in order (a repeated key keeps every value).
    pub fn from_pairs<K: AsRef<str>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Metadata, Error> {
        let mut md = Metadata::new();
        for (key, value) in pairs {
            md.append(key.as_ref(), value)?;
        }
        Ok(md)
    }

    fn entries(&self) -> &Vec<(String, String)> {
        self.entries.as_deref().unwrap_or(&NO_ENTRIES)
    }

    fn entries_mut(&mut self) -> &mut Vec<(String, String)> {
        Arc::make_mut(self.entries.get_or_insert_with(Default::default))
    }

    /// Sets `key` to `value` alone, replacing any values it had.
    pub fn insert(&mut self, key: &str, value: impl Into<String>) -> Result<(), Error> {
        let value = value.into();
        validate(key, &value)?;
        let entries = self.entries_mut();
        match entries.iter().position(|(k, _)| k == key) {
            Some(first) => {
                entries[first].1 = value;
                let mut at = 0;
                entries.retain(|(k, _)| {
                    at += 1;
                    at - 1 == first || k != key
                });
            }
            None => entries.push((key.to_string(), value)),
        }
        Ok(())
    }

    /// Adds a value to `key`, keeping those it had.
    pub fn append(&mut self, key: &str, value: impl Into<String>) -> Result<(), Error> {
        let value = value.into();
        validate(key, &value)?;
        self.entries_mut().push((key.to_string(), value));
        Ok(())
    }

    /// Removes every value of `key`; true if it had one.
    pub fn remove(&mut self, key: &str) -> bool {
        if !self.contains_key(key) {
            return false;
        }
        self.entries_mut().retain(|(k, _)| k != key);
        true
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries()
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries()
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True if `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries().iter().any(|(k, _)| k == key)
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries().iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// How many entries (a key with two values counts twice).
    pub fn len(&self) -> usize {
        self.entries().len()
    }

    /// True without entries.
    pub fn is_empty(&self) -> bool {
        self.entries().is_empty()
    }

    /// The bytes these entries take as user properties: each name (`md-`
    /// and the key) and value, the measure of [`MAX_METADATA_BYTES`].
    pub fn wire_bytes(&self) -> usize {
        self.entries()
            .iter()
            .map(|(k, v)| METADATA_PREFIX.len() + k.len() + v.len())
            .sum()
    }

    /// `self` with `other`'s entries on top: a key of `other` replaces all
    /// of this one's values for it.
    pub(crate) fn merged(&self, other: &Metadata) -> Metadata {
        if self.is_empty() {
            return other.clone();
        }
        if other.is_empty() {
            return self.clone();
        }
        let mut entries: Vec<(String, String)> = self
            .entries()
            .iter()
            .filter(|(k, _)| !other.contains_key(k))
            .cloned()
            .collect();
        entries.extend(other.entries().iter().cloned());
        Metadata {
            entries: Some(Arc::new(entries)),
        }
    }

    /// Refuses metadata over [`MAX_METADATA_ENTRIES`] or
    /// [`MAX_METADATA_BYTES`], naming the limit.
    pub(crate) fn check_limits(&self) -> Result<(), Error> {
        if self.len() > MAX_METADATA_ENTRIES {
            return Err(Error::InvalidMetadata {
                reason: format!(
                    "metadata entry count is {}, limit {MAX_METADATA_ENTRIES}",
                    self.len()
                ),
            });
        }
        let bytes = self.wire_bytes();
        if bytes > MAX_METADATA_BYTES {
            return Err(Error::InvalidMetadata {
                reason: format!("metadata size is {bytes} bytes, limit {MAX_METADATA_BYTES}"),
            });
        }
        Ok(())
    }

    /// Appends the entries as `md-<key>` user properties.
    pub(crate) fn write_to(&self, user_properties: &mut Vec<(String, String)>) {
        for (key, value) in self.entries() {
            user_properties.push(([METADATA_PREFIX, key].concat(), value.clone()));
        }
    }

    /// Takes the `md-` user properties of a received message, as they
    /// came: a peer's key is not checked against the rules for sending.
    /// Allocates nothing when there are none.
    pub(crate) fn read_from(user_properties: &[(String, String)]) -> Metadata {
        let mut md = Metadata::new();
        for (name, value) in user_properties {
            md.take_property(name, value);
        }
        md
    }

    /// Takes one received user property if it is metadata (`md-<key>`);
    /// false if it is not.
    pub(crate) fn take_property(&mut self, name: &str, value: &str) -> bool {
        match name.strip_prefix(METADATA_PREFIX) {
            Some(key) => {
                self.entries_mut()
                    .push((key.to_string(), value.to_string()));
                true
            }
            None => false,
        }
    }
}

/// Whether `key` and `value` may be sent.
fn validate(key: &str, value: &str) -> Result<(), Error> {
    let bad_char = key
        .bytes()
        .find(|b| !matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.'));
    let reason = if key.is_empty() {
        Some("a metadata key is empty".to_string())
    } else if key.len() > MAX_METADATA_KEY {
        Some(format!(
            "metadata key `{key}` has {} bytes, at most {MAX_METADATA_KEY}",
            key.len()
        ))
    } else if let Some(b) = bad_char {
        Some(format!(
            "metadata key `{key}` has {:?}: keys are lowercase ASCII letters, digits, `-`, `_` and `.`",
            b as char
        ))
    } else if value.contains('\0') {
        Some(format!("the value of metadata key `{key}` contains U+0000"))
    } else {
        None
    };
    reason.map_or(Ok(()), |reason| Err(Error::InvalidMetadata { reason }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_through_user_properties() {
        let md = Metadata::from_pairs([("tenant", "acme"), ("id", "1"), ("id", "2")]).unwrap();
        let mut props = vec![("mqrpc-timeout-ms".to_string(), "1500".to_string())];
        md.write_to(&mut props);
        assert_eq!(props[1], ("md-tenant".to_string(), "acme".to_string()));
        let read = Metadata::read_from(&props);
        assert_eq!(read, md);
        assert_eq!(read.get_all("id").collect::<Vec<_>>(), ["1", "2"]);
        assert!(Metadata::read_from(&props[..1]).entries.is_none());
        assert_eq!(md.wire_bytes(), (3 + 6 + 4) + 2 * (3 + 2 + 1));
    }

    #[test]
    fn merged_replaces_keys_and_limits_are_named() {
        let defaults = Metadata::from_pairs([("tenant", "a"), ("token", "t")]).unwrap();
        let call = Metadata::from_pairs([("tenant", "b")]).unwrap();
        let md = defaults.merged(&call);
        assert_eq!(
            md.iter().collect::<Vec<_>>(),
            [("token", "t"), ("tenant", "b")]
        );
        let many = Metadata::from_pairs((0..=MAX_METADATA_ENTRIES).map(|i| (format!("k{i}"), "")))
            .unwrap();
        let err = many.check_limits().unwrap_err().to_string();
        assert!(
            err.contains("metadata entry count is 33, limit 32"),
            "{err}"
        );
        let big = Metadata::from_pairs([("k", "x".repeat(MAX_METADATA_BYTES))]).unwrap();
        let err = big.check_limits().unwrap_err().to_string();
        assert!(err.contains("limit 8192"), "{err}");
        let mut md = Metadata::new();
        assert!(md.insert("", "x").is_err());
        assert!(md.insert("a b", "x").is_err());
        assert!(md.insert("k", "a\0b").is_err());
        assert!(md.insert(&"k".repeat(129), "x").is_err());
        md.append("k", "1").unwrap();
        md.append("j", "2").unwrap();
        md.append("k", "3").unwrap();
        md.insert("k", "4").unwrap();
        assert_eq!(md.iter().collect::<Vec<_>>(), [("k", "4"), ("j", "2")]);
        assert!(md.remove("k") && !md.remove("k"));
    }
}
