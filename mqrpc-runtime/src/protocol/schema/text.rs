//! Writes a traced type as its canonical text (grammar in PROTOCOL.md,
//! "Schema fingerprints", and in the parent module's docs).

use super::format::{Fields, Format, Registry, Shape};

/// Longest canonical text of one type; a longer one (a type graph that
/// unfolds exponentially) falls back to the type's text as written.
const MAX_TEXT: usize = 1 << 20;

/// Why a traced type has no text: part of it was never traced, or it is
/// too long.
#[derive(Debug)]
pub(super) struct Untextable;

pub(super) fn render(format: &Format, registry: &Registry) -> Result<String, Untextable> {
    let mut writer = Writer {
        registry,
        open: Vec::new(),
        out: String::new(),
    };
    writer.format(format)?;
    Ok(writer.out)
}

struct Writer<'a> {
    registry: &'a Registry,
    /// Containers being written, innermost last: the targets of `^k`.
    open: Vec<usize>,
    out: String,
}

impl Writer<'_> {
    fn push(&mut self, text: &str) -> Result<(), Untextable> {
        if self.out.len() + text.len() > MAX_TEXT {
            return Err(Untextable);
        }
        self.out.push_str(text);
        Ok(())
    }

    fn format(&mut self, format: &Format) -> Result<(), Untextable> {
        match format {
            Format::Unknown => Err(Untextable),
            Format::Primitive(name) => self.push(name),
            Format::Option(inner) => self.wrapped("option<", &[inner], ">"),
            Format::Seq(inner) => self.wrapped("seq<", &[inner], ">"),
            Format::Map(key, value) => self.wrapped("map<", &[key, value], ">"),
            Format::Tuple(items) => self.tuple(items),
            Format::Container(id) => self.container(*id),
        }
    }

    /// `open` + the formats separated by `, ` + `close`.
    fn wrapped(&mut self, open: &str, formats: &[&Format], close: &str) -> Result<(), Untextable> {
        self.push(open)?;
        for (i, format) in formats.iter().enumerate() {
            if i > 0 {
                self.push(", ")?;
            }
            self.format(format)?;
        }
        self.push(close)
    }

    /// `[F; n]` when all `n >= 1` elements read alike (postcard and JSON
    /// encode a tuple and an array the same), else `(F, G, ..)`; `()` empty.
    fn tuple(&mut self, items: &[Format]) -> Result<(), Untextable> {
        let mut texts = Vec::with_capacity(items.len());
        for item in items {
            let outer = std::mem::take(&mut self.out);
            let result = self.format(item);
            texts.push(std::mem::replace(&mut self.out, outer));
            result?;
        }
        let text = match texts.first() {
            None => "()".to_string(),
            Some(first) if texts.iter().all(|text| text == first) => {
                format!("[{first}; {}]", texts.len())
            }
            Some(_) => format!("({})", texts.join(", ")),
        };
        self.push(&text)
    }

    fn container(&mut self, id: usize) -> Result<(), Untextable> {
        if let Some(position) = self.open.iter().rposition(|open| *open == id) {
            let reference = format!("^{}", self.open.len() - position);
            return self.push(&reference);
        }
        let registry = self.registry;
        self.open.push(id);
        let result = match registry.shapes.get(id).ok_or(Untextable)? {
            Shape::Struct(None) => Err(Untextable),
            // A unit struct is `unit`, a newtype its content: neither
            // shows on the wire in postcard or JSON.
            Shape::Struct(Some(Fields::Unit)) => self.push("unit"),
            Shape::Struct(Some(Fields::Newtype(inner))) => self.format(inner),
            Shape::Struct(Some(Fields::Tuple(items))) => self.tuple(items),
            Shape::Struct(Some(Fields::Named(fields))) => self.named(fields),
            Shape::Enum(variants) => self.variants(variants),
        };
        self.open.pop();
        result
    }

    /// `{a: F, b: G}`.
    fn named(&mut self, fields: &[(&'static str, Format)]) -> Result<(), Untextable> {
        self.push("{")?;
        for (i, (name, format)) in fields.iter().enumerate() {
            if i > 0 {
                self.push(", ")?;
            }
            self.push(name)?;
            self.push(": ")?;
            self.format(format)?;
        }
        self.push("}")
    }

    /// `enum{A, B(F), C(F, G), D{x: F}}`, variants in index order.
    fn variants(&mut self, variants: &[(&'static str, Option<Fields>)]) -> Result<(), Untextable> {
        self.push("enum{")?;
        for (i, (name, fields)) in variants.iter().enumerate() {
            if i > 0 {
                self.push(", ")?;
            }
            self.push(name)?;
            match fields.as_ref().ok_or(Untextable)? {
                Fields::Unit => {}
                Fields::Newtype(inner) => self.wrapped("(", &[inner], ")")?,
                Fields::Tuple(items) => {
                    let items: Vec<&Format> = items.iter().collect();
                    self.wrapped("(", &items, ")")?;
                }
                Fields::Named(named) => self.named(named)?,
            }
        }
        self.push("}")
    }
}
