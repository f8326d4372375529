//! From the provider's claims to a Lodge user: the name (checked or normalised), groups,
//! allowed groups, admin flag and profile. It decides; it performs no network I/O.
