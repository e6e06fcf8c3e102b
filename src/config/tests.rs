//! Config validation: every problem a person can make, named by key path.
