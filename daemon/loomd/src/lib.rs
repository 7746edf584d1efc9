//! loomd
