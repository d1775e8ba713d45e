//! What every backend's subscriber shares: the window of delivered records not yet acknowledged, and
//! the control handle front ends ack, seek, commit and close through. A backend keeps only its read
//! loop: how records are fetched, where a partition starts, and how offsets are stored.

mod control;
mod window;

pub(crate) use control::{ControlCommand, MemberControl};
pub(crate) use window::AckWindow;
