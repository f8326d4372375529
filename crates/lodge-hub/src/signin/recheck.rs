//! Keeps users made by the provider in step with it: each identity is refreshed with the
//! provider every `recheck`; a user it no longer vouches for is deprovisioned.
