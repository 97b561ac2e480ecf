//! Chunking (placeholder)
