//! The built-in job modules, each a [`Consumer`](crate::jobs::Consumer) the runtime in
//! [`jobs`](crate::jobs) runs on its own queue: e-mail, notifications, audit and
//! maintenance. Each is one file; a new job type starts as a copy of one of them.

pub mod audit;
pub mod email;
pub mod maintenance;
pub mod notifications;
