//! End-to-end tests of real `raftkv` processes live here once the server exists (the
//! server issue). The storage crate's own tests are in storage/tests.
