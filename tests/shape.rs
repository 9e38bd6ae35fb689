//! The code's shape, checked on every source file of the workspace's crates
//! (the server, `core/`, `wire/`, the benchmark's generator): no struct or
//! enum variant with more than [`MAX_FIELDS`] fields, no function longer
//! than [`MAX_FUNCTION_LINES`] lines, and no type whose inherent `impl`
//! blocks are spread over more than [`MAX_IMPL_FILES`] files. These are the
//! limits issue 25 set for a shard that had become one object with 37
//! fields and six files of methods: past them a type or a function does
//! several jobs, and the next feature lands in it too. Tests (`#[cfg(test)]`
//! modules, `tests/`) are not checked.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use syn::visit::Visit;

const MAX_FIELDS: usize = 16;
const MAX_FUNCTION_LINES: usize = 120;
const MAX_IMPL_FILES: usize = 2;

/// The source directories checked.
const ROOTS: &[&str] = &["src", "core/src", "wire/src", "benches/shardcast-bench/src"];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// What one file holds that the limits are about.
#[derive(Default)]
struct Shape {
    /// `(name, fields)` of structs and enum variants over the limit.
    wide: Vec<(String, usize)>,
    /// `(name, lines)` of functions over the limit.
    long: Vec<(String, usize)>,
    /// Types with an inherent `impl` in this file.
    impls: BTreeSet<String>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Lines from a function's `fn` to its closing brace (its doc comment and
/// attributes are not counted).
fn lines(sig: &syn::Signature, block: &syn::Block) -> usize {
    let (start, end) = (
        sig.fn_token.span.start(),
        block.brace_token.span.close().end(),
    );
    end.line - start.line + 1
}

fn field_count(fields: &syn::Fields) -> usize {
    fields.iter().count()
}

impl Shape {
    /// Notes a function over the length limit; `false` for a test function
    /// (not checked, nor what it holds).
    fn measure_fn(
        &mut self,
        attrs: &[syn::Attribute],
        sig: &syn::Signature,
        block: &syn::Block,
    ) -> bool {
        if is_cfg_test(attrs) {
            return false;
        }
        let n = lines(sig, block);
        if n > MAX_FUNCTION_LINES {
            self.long.push((sig.ident.to_string(), n));
        }
        true
    }
}

impl<'a> Visit<'a> for Shape {
    fn visit_item_mod(&mut self, module: &'a syn::ItemMod) {
        if !is_cfg_test(&module.attrs) {
            syn::visit::visit_item_mod(self, module);
        }
    }

    fn visit_item_struct(&mut self, item: &'a syn::ItemStruct) {
        let n = field_count(&item.fields);
        if n > MAX_FIELDS {
            self.wide.push((item.ident.to_string(), n));
        }
    }

    fn visit_item_enum(&mut self, item: &'a syn::ItemEnum) {
        for variant in &item.variants {
            let n = field_count(&variant.fields);
            if n > MAX_FIELDS {
                self.wide
                    .push((format!("{}::{}", item.ident, variant.ident), n));
            }
        }
    }

    fn visit_item_fn(&mut self, item: &'a syn::ItemFn) {
        if self.measure_fn(&item.attrs, &item.sig, &item.block) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'a syn::ImplItemFn) {
        if self.measure_fn(&item.attrs, &item.sig, &item.block) {
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'a syn::ItemImpl) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        if item.trait_.is_none() {
            if let syn::Type::Path(path) = &*item.self_ty {
                if let Some(last) = path.path.segments.last() {
                    self.impls.insert(last.ident.to_string());
                }
            }
        }
        syn::visit::visit_item_impl(self, item);
    }
}

/// Every checked file's shape, by path relative to the workspace.
fn shapes() -> BTreeMap<String, Shape> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    for dir in ROOTS {
        sources(&root.join(dir), &mut files);
    }
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("a readable source");
            let file = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let mut shape = Shape::default();
            shape.visit_file(&file);
            let relative = path.strip_prefix(root).unwrap_or(&path);
            (relative.display().to_string(), shape)
        })
        .collect()
}

#[test]
fn no_struct_has_more_than_sixteen_fields() {
    let wide: Vec<String> = shapes()
        .iter()
        .flat_map(|(file, s)| {
            s.wide
                .iter()
                .map(move |(n, f)| format!("{file}: {n} ({f})"))
        })
        .collect();
    assert!(wide.is_empty(), "more than {MAX_FIELDS} fields: {wide:#?}");
}

#[test]
fn no_function_is_longer_than_120_lines() {
    let long: Vec<String> = shapes()
        .iter()
        .flat_map(|(file, s)| {
            s.long
                .iter()
                .map(move |(n, l)| format!("{file}: {n} ({l} lines)"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "longer than {MAX_FUNCTION_LINES} lines: {long:#?}"
    );
}

#[test]
fn no_types_methods_are_spread_over_more_than_two_files() {
    // Per crate: a type's inherent impls are all in its own crate.
    let mut files_of: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (file, shape) in shapes() {
        let krate = ROOTS
            .iter()
            .filter(|r| file.starts_with(*r))
            .max_by_key(|r| r.len())
            .map_or("", |r| *r)
            .to_string();
        for ty in shape.impls {
            files_of
                .entry((krate.clone(), ty))
                .or_default()
                .push(file.clone());
        }
    }
    let spread: Vec<String> = files_of
        .into_iter()
        .filter(|(_, files)| files.len() > MAX_IMPL_FILES)
        .map(|((_, ty), files)| format!("{ty}: {files:?}"))
        .collect();
    assert!(
        spread.is_empty(),
        "inherent impls in more than {MAX_IMPL_FILES} files: {spread:#?}"
    );
}
