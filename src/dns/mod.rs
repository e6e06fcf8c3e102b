//! The authoritative DNS server (filled in by the dns work).
