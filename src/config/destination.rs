//! `[remote_storage]` and every `[[destination]]`: names, the kind of storage and the keys of
//! each kind, one function per kind (the keys every destination shares are in `shared`).

mod shared;

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::raw::*;
use super::validator::Validator;
use super::*;
use shared::shared_keys;

/// `[remote_storage]` (first, named `remote` unless it says) and every `[[destination]]`:
/// names unique, `per = "cluster"` only with one destination.
pub(super) fn validate_destinations(
    remote: Option<Spanned<RawRemote>>,
    list: Option<Vec<Spanned<RawRemote>>>,
    v: &mut Validator<'_>,
    zone: Zone,
) -> Vec<DestinationConfig> {
    let mut out: Vec<DestinationConfig> = Vec::new();
    let mut spans = Vec::new();
    let tables = remote
        .into_iter()
        .map(|r| (true, r))
        .chain(list.unwrap_or_default().into_iter().map(|r| (false, r)));
    for (i, (legacy, r)) in tables.enumerate() {
        let span = r.span();
        let name_span = r.get_ref().name.as_ref().map(Spanned::span);
        let d = validate_destination(r, legacy, i, v, zone);
        if out.iter().any(|o| o.name == d.name) {
            v.problem(
                name_span.or(Some(span.clone())),
                &format!("{}.name", d.table),
                format!(
                    "another destination is named {:?} already: each needs its own name (it \
                     names the copy in records and metrics)",
                    d.name
                ),
            );
        }
        spans.push(span);
        out.push(d);
    }
    if out.len() > 1 {
        if let Some(pos) = out.iter().position(|d| d.per_cluster) {
            v.problem(
                Some(spans[pos].clone()),
                &format!("{}.per", out[pos].table),
                "per = \"cluster\" works with one destination only: with several, every node \
                 uploads its own copy to each",
            );
        }
    }
    out
}

/// A destination's name: letters, digits, `-` and `_`, up to 40 characters.
fn destination_name(
    raw: Option<Spanned<String>>,
    legacy: bool,
    v: &mut Validator<'_>,
    at: Range<usize>,
    field: &str,
) -> String {
    match raw {
        None if legacy => DEFAULT_DESTINATION.to_string(),
        None => {
            v.problem(
                Some(at),
                field,
                "is required in a [[destination]]: it names the copy in records and metrics",
            );
            String::new()
        }
        Some(n) => {
            let ok = !n.get_ref().is_empty()
                && n.get_ref().len() <= 40
                && n.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                v.problem(
                    Some(n.span()),
                    field,
                    format!(
                        "{:?} is not a destination name: use up to 40 letters, digits, '-' or '_'",
                        n.get_ref()
                    ),
                );
            }
            n.into_inner()
        }
    }
}

/// The kinds of storage a destination can be, by their `type`, each with the function that
/// validates the keys of that kind. The first is the default: when `type` is unset, and (after
/// the problem) when it is unknown.
const KINDS: [(&str, KindKeys); 4] = [("s3", s3), ("gcs", gcs), ("azblob", azblob), ("fs", fs)];

/// Validates the keys of one kind of storage. It takes them out of the table (`take()`), so
/// that what is left is the keys every kind shares, and a key of another kind stands out.
type KindKeys = fn(&mut RawRemote, &Table<'_>, &mut Validator<'_>) -> Storage;

/// What the keys of a kind give: the storage, and its bucket (or container) and region.
struct Storage {
    kind: Kind,
    bucket: String,
    region: String,
}

/// One destination table being validated: where its problems point and how they name it.
struct Table<'a> {
    /// How messages name the table: `remote_storage`, `destination.<name>`, or
    /// `destination[<index>]` when it has no name (the prefix of its fields).
    name: &'a str,
    /// `[remote_storage]`, the one destination of old (else a `[[destination]]`).
    legacy: bool,
    /// The whole table: where a missing key is reported.
    span: Range<usize>,
    /// Its `type`, for "applies to … only".
    kind: &'static str,
}

impl Table<'_> {
    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.name)
    }

    /// For "is required in a …".
    fn section(&self) -> &'static str {
        if self.legacy {
            "[remote_storage]"
        } else {
            "[[destination]]"
        }
    }

    /// A key this kind of storage requires: present, and not blank.
    fn required(&self, raw: Option<Spanned<String>>, key: &str, v: &mut Validator<'_>) -> String {
        match raw {
            Some(s) if !s.get_ref().trim().is_empty() => s.into_inner(),
            Some(s) => {
                v.problem(Some(s.span()), &self.field(key), "must not be empty");
                String::new()
            }
            None => {
                v.problem(
                    Some(self.span.clone()),
                    &self.field(key),
                    format!(
                        "is required in a {} of type = {:?}",
                        self.section(),
                        self.kind
                    ),
                );
                String::new()
            }
        }
    }

    /// A key that only the `kinds` of storage have, when it is `present` in this one.
    fn not_for(
        &self,
        present: Option<Range<usize>>,
        key: &str,
        kinds: &str,
        v: &mut Validator<'_>,
    ) {
        if let Some(span) = present {
            v.problem(
                Some(span),
                &self.field(key),
                format!(
                    "applies to {kinds} destinations only, and this one is type = {:?}",
                    self.kind
                ),
            );
        }
    }
}

fn span_of<T>(raw: &Option<Spanned<T>>) -> Option<Range<usize>> {
    raw.as_ref().map(Spanned::span)
}

/// One destination table: its name, then the keys of its kind of storage by that kind's
/// function in [`KINDS`], then the keys every destination shares. Adding a kind is one
/// function like [`gcs`] and one row in [`KINDS`].
fn validate_destination(
    r: Spanned<RawRemote>,
    legacy: bool,
    index: usize,
    v: &mut Validator<'_>,
    zone: Zone,
) -> DestinationConfig {
    let span = r.span();
    let mut r = r.into_inner();
    let (name, table) = name_and_table(r.name.take(), legacy, index, span.clone(), v);
    let (kind, kind_keys) = kind_of(r.kind.take(), &format!("{table}.type"), v);
    let t = Table {
        name: &table,
        legacy,
        span,
        kind,
    };
    let storage = kind_keys(&mut r, &t, v);
    other_kinds_keys(&r, &t, v);
    shared_keys(r, storage, name, &t, v, zone)
}

/// The destination's name (`remote` for `[remote_storage]` by default), and how messages name
/// its table.
fn name_and_table(
    raw: Option<Spanned<String>>,
    legacy: bool,
    index: usize,
    span: Range<usize>,
    v: &mut Validator<'_>,
) -> (String, String) {
    let name_field = if legacy {
        "remote_storage.name".to_string()
    } else {
        format!("destination[{index}].name")
    };
    let name = destination_name(raw, legacy, v, span, &name_field);
    let table = if legacy {
        "remote_storage".to_string()
    } else if name.is_empty() {
        format!("destination[{index}]")
    } else {
        format!("destination.{name}")
    };
    (name, table)
}

/// `type` (or `kind`): one of [`KINDS`].
fn kind_of(
    raw: Option<Spanned<String>>,
    field: &str,
    v: &mut Validator<'_>,
) -> (&'static str, KindKeys) {
    let default = KINDS[0];
    let Some(k) = raw else { return default };
    if let Some(&known) = KINDS.iter().find(|(name, _)| name == k.get_ref()) {
        return known;
    }
    let supported: Vec<String> = KINDS.iter().map(|(name, _)| format!("{name:?}")).collect();
    v.problem(
        Some(k.span()),
        field,
        format!(
            "unsupported storage type {:?}; supported: {}",
            k.get_ref(),
            supported.join(", ")
        ),
    );
    default
}

/// `type = "s3"`: `bucket` and `region`.
fn s3(r: &mut RawRemote, t: &Table<'_>, v: &mut Validator<'_>) -> Storage {
    Storage {
        kind: Kind::S3,
        bucket: t.required(r.bucket.take(), "bucket", v),
        region: t.required(r.region.take(), "region", v),
    }
}

/// `type = "gcs"`: `bucket`; `anonymous` for no credentials at all.
fn gcs(r: &mut RawRemote, t: &Table<'_>, v: &mut Validator<'_>) -> Storage {
    t.not_for(span_of(&r.region), "region", "s3", v);
    Storage {
        kind: Kind::Gcs {
            anonymous: r.anonymous.take().unwrap_or(false),
        },
        bucket: t.required(r.bucket.take(), "bucket", v),
        region: String::new(),
    }
}

/// `type = "azblob"`: `account_name` and `container` (`bucket` is accepted too).
fn azblob(r: &mut RawRemote, t: &Table<'_>, v: &mut Validator<'_>) -> Storage {
    t.not_for(span_of(&r.region), "region", "s3", v);
    let container = r.container.take().or(r.bucket.take());
    let account = t.required(r.account_name.take(), "account_name", v);
    Storage {
        kind: Kind::Azblob { account },
        bucket: t.required(container, "container", v),
        region: String::new(),
    }
}

/// `type = "fs"`: `path`, the mounted directory, and `require_mount` (true by default).
fn fs(r: &mut RawRemote, t: &Table<'_>, v: &mut Validator<'_>) -> Storage {
    t.not_for(span_of(&r.region), "region", "s3", v);
    t.not_for(span_of(&r.bucket), "bucket", "s3, gcs and azblob", v);
    let path = match r.path.take() {
        Some(p) => v.path(Some(p), &t.field("path"), Path::new("")),
        None => {
            v.problem(
                Some(t.span.clone()),
                &t.field("path"),
                format!(
                    "is required in a {} of type = \"fs\": the mounted directory",
                    t.section()
                ),
            );
            PathBuf::new()
        }
    };
    Storage {
        kind: Kind::Fs {
            path,
            require_mount: r.require_mount.take().unwrap_or(true),
        },
        bucket: String::new(),
        region: String::new(),
    }
}

/// The keys only one kind has, still in the table after its kind's function took its own:
/// the table is another kind, so they would be ignored.
fn other_kinds_keys(r: &RawRemote, t: &Table<'_>, v: &mut Validator<'_>) {
    t.not_for(span_of(&r.container), "container", "azblob", v);
    t.not_for(span_of(&r.account_name), "account_name", "azblob", v);
    t.not_for(span_of(&r.path), "path", "fs", v);
}
