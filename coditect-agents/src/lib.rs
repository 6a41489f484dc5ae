//! coditect-agents (under construction).
