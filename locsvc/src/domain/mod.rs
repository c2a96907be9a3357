//! Domain types shared by the registrar, the router and the stores: what a
//! binding is, independent of SQL rows and protobuf messages.

pub mod aor;
pub mod binding;

pub use aor::{Aor, AorError, KeyPolicy};
pub use binding::{Binding, ContactInput, PERMANENT_UNTIL, SaveInput, UnixTime};
