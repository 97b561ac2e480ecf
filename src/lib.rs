//! # spime
//!
//! A device-to-vendor lifecycle protocol for connected products.
#![cfg_attr(not(any(test, feature = "std")), no_std)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "alloc")]
extern crate alloc;

pub mod codec;
pub mod consent;
pub mod error;
pub mod message;
pub mod seal;
#[cfg(feature = "std")]
pub mod vendor;
pub mod wire;
