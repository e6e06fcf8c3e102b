//! Health checks (filled in by the health work).
