//! The steps of a job, one file each, numbered in flow order:
//!
//! ```text
//! 1 mark -> 2 copy | 2 QEMU mirror | 2 join the replaced copy (a resync)
//!        -> 3 rounds -> 4 cutover -> 5 switch
//!        -> 6 re-point | 6 QEMU pivot -> 7 cleanup          (abort: any time before 5)
//! ```
//!
//! Which of them a job takes, in which order, is [`super::pipeline`]'s
//! decision. Each step persists what it did before it returns and first
//! checks whether its action already happened (a crash may fall between the
//! two), so running it again always converges.

mod abort;
#[path = "7_cleanup.rs"]
mod cleanup;
#[path = "2_copy.rs"]
mod copy;
#[path = "4_cutover.rs"]
mod cutover;
#[path = "2_join_replaced_copy.rs"]
mod join_replaced_copy;
#[path = "1_mark.rs"]
mod mark;
#[path = "2_qemu_mirror.rs"]
mod qemu_mirror;
#[path = "6_qemu_pivot.rs"]
mod qemu_pivot;
#[path = "6_repoint.rs"]
mod repoint;
mod retire_lost_source;
#[path = "3_rounds.rs"]
mod rounds;
#[path = "5_switch.rs"]
mod switch;
