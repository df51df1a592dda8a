//! Traces the structure of a type through its `serde::Deserialize` impl:
//! a deserializer that hands the type's visitor placeholder values and
//! records what each `deserialize_*` call asked for.
//!
//! Containers (structs, tuple structs, newtypes, unit structs, enums) are
//! recorded once per Rust type in a [`Registry`], so a recursive type is
//! seen as a cycle. An enum gives one variant per deserialization, so the
//! whole type is deserialized again until every variant of every enum it
//! reaches is known. A container met again inside itself (recursion) is
//! finished "in shadow": with the smallest value it has (`None`, empty
//! sequences and maps, an enum variant not already being traced), and
//! nothing recorded.

use std::any::type_name;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

use super::format::{Fields, Format, Registry, Shape};

/// Deepest nesting traced (containers, options, sequences, maps, tuples);
/// deeper types fall back to their text, before the thread's stack runs out.
const MAX_DEPTH: usize = 96;
/// Most `deserialize_*` calls one type may take, over all its passes.
const MAX_STEPS: usize = 200_000;

/// Why a type could not be traced; the type then counts by its text.
#[derive(Debug)]
pub(super) struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(message: T) -> Self {
        TraceError(message.to_string())
    }
}

fn fail<T>(message: &str) -> Result<T, TraceError> {
    Err(TraceError(message.to_string()))
}

/// The top-level format of `T` and the registry its containers point into.
pub(super) fn trace<T: DeserializeOwned>() -> Result<(Format, Registry), TraceError> {
    let mut tracer = Tracer::default();
    loop {
        tracer.progressed = false;
        let mut format = Format::Unknown;
        T::deserialize(De {
            tracer: &mut tracer,
            out: &mut format,
            shadow: false,
        })?;
        let incomplete = (0..tracer.registry.shapes.len()).any(|id| tracer.registry.incomplete(id));
        if !incomplete {
            return Ok((format, tracer.registry));
        }
        if !tracer.progressed {
            return fail("some enum variants cannot be reached");
        }
    }
}

#[derive(Default)]
struct Tracer {
    registry: Registry,
    /// Containers being traced, innermost last, with the variant chosen.
    stack: Vec<(usize, Option<usize>)>,
    depth: usize,
    steps: usize,
    /// Whether this pass traced a variant for the first time.
    progressed: bool,
}

impl Tracer {
    /// Runs `body` one level deeper, within the depth and step limits.
    fn nested<R>(
        &mut self,
        body: impl FnOnce(&mut Tracer) -> Result<R, TraceError>,
    ) -> Result<R, TraceError> {
        if self.depth >= MAX_DEPTH {
            return fail("nested too deeply");
        }
        if self.steps >= MAX_STEPS {
            return fail("too large to trace");
        }
        self.steps += 1;
        self.depth += 1;
        let result = body(self);
        self.depth -= 1;
        result
    }

    fn in_progress(&self, id: usize) -> bool {
        self.stack.iter().any(|(open, _)| *open == id)
    }

    /// The variant to trace this time: one never traced, else one leading
    /// to an enum with untraced variants, else the first.
    fn choose(&self, id: usize) -> usize {
        let Shape::Enum(variants) = &self.registry.shapes[id] else {
            return 0;
        };
        if let Some(index) = variants.iter().position(|(_, f)| f.is_none()) {
            return index;
        }
        let mut avoid: HashSet<usize> = self.stack.iter().map(|(open, _)| *open).collect();
        avoid.insert(id);
        variants
            .iter()
            .position(|(_, fields)| {
                fields
                    .as_ref()
                    .is_some_and(|f| self.registry.fields_reach_incomplete(f, &mut avoid.clone()))
            })
            .unwrap_or(0)
    }

    /// In shadow, the first variant not already on the stack.
    fn choose_in_shadow(&self, id: usize, count: usize) -> Result<usize, TraceError> {
        (0..count)
            .find(|index| !self.stack.contains(&(id, Some(*index))))
            .map_or_else(|| fail("no finite value"), Ok)
    }
}

/// Deserializes one value, writing its format to `out`.
struct De<'t> {
    tracer: &'t mut Tracer,
    out: &'t mut Format,
    /// Inside a recursion: build the smallest value, record nothing.
    shadow: bool,
}

macro_rules! primitive {
    ($($method:ident => $name:literal, $visit:ident($($value:expr)?);)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
                *self.out = Format::Primitive($name);
                visitor.$visit($($value)?)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for De<'_> {
    type Error = TraceError;

    fn is_human_readable(&self) -> bool {
        // Traced as postcard sees it.
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        fail("self-describing (deserialize_any)")
    }

    primitive! {
        deserialize_bool => "bool", visit_bool(false);
        deserialize_i8 => "i8", visit_i8(1);
        deserialize_i16 => "i16", visit_i16(1);
        deserialize_i32 => "i32", visit_i32(1);
        deserialize_i64 => "i64", visit_i64(1);
        deserialize_i128 => "i128", visit_i128(1);
        deserialize_u8 => "u8", visit_u8(1);
        deserialize_u16 => "u16", visit_u16(1);
        deserialize_u32 => "u32", visit_u32(1);
        deserialize_u64 => "u64", visit_u64(1);
        deserialize_u128 => "u128", visit_u128(1);
        deserialize_f32 => "f32", visit_f32(1.0);
        deserialize_f64 => "f64", visit_f64(1.0);
        deserialize_char => "char", visit_char('a');
        deserialize_str => "string", visit_borrowed_str("");
        deserialize_string => "string", visit_string(String::new());
        deserialize_bytes => "bytes", visit_borrowed_bytes(b"");
        deserialize_byte_buf => "bytes", visit_byte_buf(Vec::new());
        deserialize_unit => "unit", visit_unit();
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let id = self
            .tracer
            .registry
            .id(type_name::<V::Value>(), || Shape::Struct(None));
        *self.out = Format::Container(id);
        if !self.shadow {
            self.tracer.registry.shapes[id] = Shape::Struct(Some(Fields::Unit));
        }
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut inner = Format::Unknown;
        let value = self.container::<V::Value, _>(|tracer, shadow| {
            let value = visitor.visit_newtype_struct(De {
                tracer,
                out: &mut inner,
                shadow,
            })?;
            Ok((value, Fields::Newtype(inner)))
        })?;
        Ok(value)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let De {
            tracer,
            out,
            shadow,
        } = self;
        tracer.nested(|tracer| {
            if shadow {
                return visitor.visit_none();
            }
            let mut inner = Format::Unknown;
            let value = visitor.visit_some(De {
                tracer,
                out: &mut inner,
                shadow,
            });
            *out = Format::Option(Box::new(inner));
            value
        })
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let De {
            tracer,
            out,
            shadow,
        } = self;
        tracer.nested(|tracer| {
            // One element while tracing (its format is the item's), none in shadow.
            let mut slots = vec![Format::Unknown; usize::from(!shadow)];
            let value = visitor.visit_seq(Elements::new(tracer, &mut slots, shadow));
            *out = Format::Seq(Box::new(slots.pop().unwrap_or(Format::Unknown)));
            value
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let De {
            tracer,
            out,
            shadow,
        } = self;
        tracer.nested(|tracer| {
            let mut slots = vec![Format::Unknown; len];
            let value = visitor.visit_seq(Elements::new(tracer, &mut slots, shadow));
            *out = Format::Tuple(slots);
            value
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.container::<V::Value, _>(|tracer, shadow| {
            let mut slots = vec![Format::Unknown; len];
            let value = visitor.visit_seq(Elements::new(tracer, &mut slots, shadow))?;
            Ok((value, Fields::Tuple(slots)))
        })
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        let De {
            tracer,
            out,
            shadow,
        } = self;
        tracer.nested(|tracer| {
            let (mut key, mut value) = (Format::Unknown, Format::Unknown);
            let result = visitor.visit_map(Entries {
                tracer,
                key: &mut key,
                value: &mut value,
                left: !shadow,
            });
            *out = Format::Map(Box::new(key), Box::new(value));
            result
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.container::<V::Value, _>(|tracer, shadow| {
            let mut slots = vec![Format::Unknown; fields.len()];
            let value = visitor.visit_seq(Elements::new(tracer, &mut slots, shadow))?;
            Ok((
                value,
                Fields::Named(fields.iter().copied().zip(slots).collect()),
            ))
        })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        if variants.is_empty() {
            return fail("an enum without variants");
        }
        let De {
            tracer,
            out,
            shadow,
        } = self;
        tracer.nested(|tracer| {
            let id = tracer.registry.id(type_name::<V::Value>(), || {
                Shape::Enum(variants.iter().map(|name| (*name, None)).collect())
            });
            *out = Format::Container(id);
            let shadow = shadow || tracer.in_progress(id);
            let index = match shadow {
                true => tracer.choose_in_shadow(id, variants.len())?,
                false => tracer.choose(id),
            };
            tracer.stack.push((id, Some(index)));
            let mut fields = None;
            let value = visitor.visit_enum(Variant {
                tracer: &mut *tracer,
                index,
                fields: &mut fields,
                shadow,
            });
            tracer.stack.pop();
            let value = value?;
            if let (false, Some(fields), Shape::Enum(known)) =
                (shadow, fields, &mut tracer.registry.shapes[id])
            {
                let Some((_, slot)) = known.get_mut(index) else {
                    return fail("a variant index out of range");
                };
                tracer.progressed |= slot.is_none();
                *slot = Some(fields);
            }
            Ok(value)
        })
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, TraceError> {
        fail("an identifier outside an enum")
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        *self.out = Format::Primitive("unit");
        visitor.visit_unit()
    }
}

impl De<'_> {
    /// A struct, tuple struct or newtype: `body` deserializes its content
    /// (in shadow if it is already being traced) and says its fields.
    fn container<T, R>(
        self,
        body: impl FnOnce(&mut Tracer, bool) -> Result<(R, Fields), TraceError>,
    ) -> Result<R, TraceError>
    where
        T: ?Sized,
    {
        let De {
            tracer,
            out,
            shadow,
        } = self;
        tracer.nested(|tracer| {
            let id = tracer.registry.id(type_name::<T>(), || Shape::Struct(None));
            *out = Format::Container(id);
            let shadow = shadow || tracer.in_progress(id);
            tracer.stack.push((id, None));
            let result = body(&mut *tracer, shadow);
            tracer.stack.pop();
            let (value, fields) = result?;
            if !shadow {
                tracer.registry.shapes[id] = Shape::Struct(Some(fields));
            }
            Ok(value)
        })
    }
}

/// The elements of a sequence, tuple or struct: one per slot.
struct Elements<'a> {
    tracer: &'a mut Tracer,
    slots: &'a mut [Format],
    next: usize,
    shadow: bool,
}

impl<'a> Elements<'a> {
    fn new(tracer: &'a mut Tracer, slots: &'a mut [Format], shadow: bool) -> Self {
        Elements {
            tracer,
            slots,
            next: 0,
            shadow,
        }
    }
}

impl<'de> de::SeqAccess<'de> for Elements<'_> {
    type Error = TraceError;

    fn next_element_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<Option<S::Value>, TraceError> {
        let Some(out) = self.slots.get_mut(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        seed.deserialize(De {
            tracer: &mut *self.tracer,
            out,
            shadow: self.shadow,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.slots.len() - self.next)
    }
}

/// The entries of a map: one while tracing, none in shadow.
struct Entries<'a> {
    tracer: &'a mut Tracer,
    key: &'a mut Format,
    value: &'a mut Format,
    left: bool,
}

impl<'de> de::MapAccess<'de> for Entries<'_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, TraceError> {
        if !self.left {
            return Ok(None);
        }
        self.left = false;
        seed.deserialize(De {
            tracer: &mut *self.tracer,
            out: &mut *self.key,
            shadow: false,
        })
        .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(
        &mut self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        seed.deserialize(De {
            tracer: &mut *self.tracer,
            out: &mut *self.value,
            shadow: false,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(usize::from(self.left))
    }
}

/// The chosen variant of an enum.
struct Variant<'a> {
    tracer: &'a mut Tracer,
    index: usize,
    fields: &'a mut Option<Fields>,
    shadow: bool,
}

impl<'de, 'a> de::EnumAccess<'de> for Variant<'a> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), TraceError> {
        let index =
            u32::try_from(self.index).map_err(|_| TraceError("too many variants".into()))?;
        let variant = seed.deserialize(IntoDeserializer::<TraceError>::into_deserializer(index))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_> {
    type Error = TraceError;

    fn unit_variant(self) -> Result<(), TraceError> {
        *self.fields = Some(Fields::Unit);
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, TraceError> {
        let mut inner = Format::Unknown;
        let value = seed.deserialize(De {
            tracer: self.tracer,
            out: &mut inner,
            shadow: self.shadow,
        })?;
        *self.fields = Some(Fields::Newtype(inner));
        Ok(value)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut slots = vec![Format::Unknown; len];
        let value = visitor.visit_seq(Elements::new(self.tracer, &mut slots, self.shadow))?;
        *self.fields = Some(Fields::Tuple(slots));
        Ok(value)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        let mut slots = vec![Format::Unknown; fields.len()];
        let value = visitor.visit_seq(Elements::new(self.tracer, &mut slots, self.shadow))?;
        *self.fields = Some(Fields::Named(fields.iter().copied().zip(slots).collect()));
        Ok(value)
    }
}
