//! What a trace finds: the format of each value position, and the shape of
//! each container (struct or enum), once per Rust type.

use std::collections::{HashMap, HashSet};

/// What one value position holds.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Format {
    /// Never asked for (the visitor skipped it): the trace is incomplete.
    Unknown,
    /// `bool`, an integer, a float, `char`, `string`, `bytes` or `unit`.
    Primitive(&'static str),
    Option(Box<Format>),
    Seq(Box<Format>),
    Map(Box<Format>, Box<Format>),
    Tuple(Vec<Format>),
    /// A struct, tuple struct, newtype, unit struct or enum: its index in
    /// the registry.
    Container(usize),
}

/// The content of a struct or an enum variant.
#[derive(Clone, Debug)]
pub(super) enum Fields {
    Unit,
    Newtype(Format),
    Tuple(Vec<Format>),
    Named(Vec<(&'static str, Format)>),
}

/// A container's shape; `None` until it has been traced once.
#[derive(Clone, Debug)]
pub(super) enum Shape {
    Struct(Option<Fields>),
    /// Variant names in index order, each with its content once traced.
    Enum(Vec<(&'static str, Option<Fields>)>),
}

/// Every container met, by Rust type.
#[derive(Default, Debug)]
pub(super) struct Registry {
    pub(super) shapes: Vec<Shape>,
    ids: HashMap<&'static str, usize>,
}

impl Registry {
    pub(super) fn id(&mut self, key: &'static str, new: impl FnOnce() -> Shape) -> usize {
        if let Some(&id) = self.ids.get(key) {
            return id;
        }
        self.shapes.push(new());
        self.ids.insert(key, self.shapes.len() - 1);
        self.shapes.len() - 1
    }

    pub(super) fn incomplete(&self, id: usize) -> bool {
        matches!(&self.shapes[id], Shape::Enum(variants) if variants.iter().any(|(_, f)| f.is_none()))
    }

    /// Whether `format` leads to an enum with a variant not yet traced,
    /// without passing through `avoid` (containers being traced).
    fn reaches_incomplete(&self, format: &Format, avoid: &mut HashSet<usize>) -> bool {
        match format {
            Format::Unknown | Format::Primitive(_) => false,
            Format::Option(inner) | Format::Seq(inner) => self.reaches_incomplete(inner, avoid),
            Format::Map(key, value) => {
                self.reaches_incomplete(key, avoid) || self.reaches_incomplete(value, avoid)
            }
            Format::Tuple(items) => items.iter().any(|f| self.reaches_incomplete(f, avoid)),
            Format::Container(id) => {
                if !avoid.insert(*id) {
                    return false;
                }
                if self.incomplete(*id) {
                    return true;
                }
                match &self.shapes[*id] {
                    Shape::Struct(fields) => fields
                        .iter()
                        .any(|fields| self.fields_reach_incomplete(fields, avoid)),
                    Shape::Enum(variants) => variants
                        .iter()
                        .filter_map(|(_, fields)| fields.as_ref())
                        .any(|fields| self.fields_reach_incomplete(fields, avoid)),
                }
            }
        }
    }

    pub(super) fn fields_reach_incomplete(
        &self,
        fields: &Fields,
        avoid: &mut HashSet<usize>,
    ) -> bool {
        match fields {
            Fields::Unit => false,
            Fields::Newtype(f) => self.reaches_incomplete(f, avoid),
            Fields::Tuple(items) => items.iter().any(|f| self.reaches_incomplete(f, avoid)),
            Fields::Named(named) => named.iter().any(|(_, f)| self.reaches_incomplete(f, avoid)),
        }
    }
}
