//! The vhost-user control plane.
