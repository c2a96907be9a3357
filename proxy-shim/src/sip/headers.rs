//! Header rows, read and edited the way the facade needs: a required or
//! optional typed header with its `HeaderProblem`, every value of a list
//! header, and the row edits that leave every other byte of a message as it
//! arrived.

use bytes::Bytes;
use sipx_sip::{Header, HeaderName, Headers, TypedHeader};

use super::errors::HeaderProblem;

/// Bytes from the wire as text (a stray non-UTF-8 byte must not fail a read).
pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A header name as the library knows it (compact and long forms are one).
pub(super) fn header_name(name: &str) -> HeaderName {
    HeaderName::parse(&Bytes::copy_from_slice(name.as_bytes()))
}

/// The first `H` header: `Missing(name)` when absent, `Bad(name)` when it
/// does not parse.
pub(super) fn required<H: TypedHeader>(
    headers: &Headers,
    name: &'static str,
) -> Result<H, HeaderProblem> {
    headers
        .typed::<H>()
        .ok_or(HeaderProblem::Missing(name))?
        .map_err(|_| HeaderProblem::Bad(name))
}

/// The first `H` header if present; `Bad(name)` when it does not parse.
pub(super) fn optional<H: TypedHeader>(
    headers: &Headers,
    name: &'static str,
) -> Result<Option<H>, HeaderProblem> {
    headers
        .typed::<H>()
        .map(|r| r.map_err(|_| HeaderProblem::Bad(name)))
        .transpose()
}

/// Every value of list header `H` (every row, comma-joined values split),
/// in wire order, through `f`; `Bad(name)` when one does not parse.
pub(super) fn every<H: TypedHeader, T>(
    headers: &Headers,
    name: &'static str,
    f: impl Fn(H) -> T,
) -> Result<Vec<T>, HeaderProblem> {
    headers
        .typed_all::<H>()
        .map(|r| r.map(&f).map_err(|_| HeaderProblem::Bad(name)))
        .collect()
}

/// Every row of header `name`, as written.
pub(super) fn rows(headers: &Headers, name: &str) -> Vec<String> {
    headers
        .get_all(&header_name(name))
        .map(|h| text(&h.value()))
        .collect()
}

/// Replaces every row of `name` with one holding `value`, where the first
/// one stood (appended when there was none).
pub(super) fn set_header(headers: &mut Headers, name: HeaderName, value: String) {
    let at = headers.iter().position(|h| h.name() == &name);
    if let Ok(h) = Header::build(name.clone(), value) {
        headers.remove_all(&name);
        match at {
            Some(i) => headers.insert(i, h),
            None => headers.push(h),
        }
    }
}

/// Where the first row of `name` stands, if there is one.
pub(super) fn first_position(headers: &Headers, name: &HeaderName) -> Option<usize> {
    headers.iter().position(|h| h.name() == name)
}

/// Replaces the first row of `name` with `new` (None removes the row),
/// keeping its position.
fn replace_first_row(headers: &mut Headers, name: &HeaderName, new: Option<Header>) {
    let Some(at) = first_position(headers, name) else {
        return;
    };
    let mut i = 0usize;
    headers.retain(|_| {
        let keep = i != at;
        i += 1;
        keep
    });
    if let Some(h) = new {
        headers.insert(at, h);
    }
}

/// The first row of list header `name`, split after its first value.
fn split_first_row(headers: &Headers, name: &HeaderName) -> Option<(String, String)> {
    let row = headers.get(name).map(|h| text(&h.value()))?;
    let end = sipx_sip::headers::via::first_hop_end(row.as_bytes()).min(row.len());
    let (first, rest) = row.split_at(end);
    Some((first.to_string(), rest.to_string()))
}

/// Applies `f` to the first hop of the first Via row; the other hops of
/// that row go back out exactly as they arrived.
pub(super) fn edit_first_via(headers: &mut Headers, f: impl FnOnce(&str) -> String) {
    let Some((first, rest)) = split_first_row(headers, &HeaderName::Via) else {
        return;
    };
    let value = format!("{}{rest}", f(first.trim_end()));
    if let Ok(h) = Header::build(HeaderName::Via, value) {
        replace_first_row(headers, &HeaderName::Via, Some(h));
    }
}

/// Removes the first value of a list header (the first hop of its first row).
pub(super) fn pop_first_value(headers: &mut Headers, name: &HeaderName) {
    let Some((_, rest)) = split_first_row(headers, name) else {
        return;
    };
    let rest = rest.trim_start_matches(',').trim();
    let new = if rest.is_empty() {
        None
    } else {
        Header::build(name.clone(), rest.to_string()).ok()
    };
    replace_first_row(headers, name, new);
}
