//! Aggregated Discovery Service client for istiod. Generic over resource types: it keeps
//! subscriptions, versions and nonces, ACKs and NACKs, and hands decoded resources to a handler;
//! it knows nothing about routing.
