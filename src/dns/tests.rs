//! Wire tests for the DNS server.
