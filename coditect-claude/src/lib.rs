//! coditect-claude (under construction).
