//! The reconciler's decisions as one pure function: [`plan`] takes a
//! workspace's intent and what is observed of it (the row, the control
//! plane's answer, this replica's pacing) at a time `now`, and returns the
//! one [`Action`] to take, the pacing to keep, and when to look again.
//!
//! Nothing here does I/O or reads a clock: the executor in `reconciler.rs`
//! gathers the [`Facts`], calls [`plan`], and carries the action out. The
//! tables at the bottom cover every rule.

use holdfast_domain::{DesiredState, Millis, Status};

/// What the control plane says of the workspace's recorded instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// No instance is recorded.
    Nothing,
    Running,
    /// It exited on its own: a crash.
    Exited,
    /// The control plane does not know it (it was restarted, or the server
    /// was, and stopped what the previous run left): not a crash.
    Gone,
}

/// What this replica keeps of a workspace to pace its own actions. Not
/// persisted: a replica that takes over starts from the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pacing {
    /// Crashes since the last stable run; drives the backoff.
    pub crashes: u32,
    /// No automatic restart before this time.
    pub next_attempt: Option<Millis>,
    /// Provisioning failed for this generation: wait for a new intent.
    pub failed_generation: Option<i64>,
    /// The generation of intent this replica last tried to start.
    pub attempted_generation: Option<i64>,
}

/// The timing rules, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub heartbeat_window: Millis,
    pub provision_timeout: Millis,
    pub backoff_base: Millis,
    pub backoff_max: Millis,
    /// A run this long resets the crash count.
    pub stable_after: Millis,
}

impl Timing {
    /// Exponential backoff after `crashes` consecutive crashes, capped.
    pub fn backoff(&self, crashes: u32) -> Millis {
        let factor = 1i64
            .checked_shl(crashes.saturating_sub(1).min(16))
            .unwrap_or(i64::MAX);
        self.backoff_base
            .saturating_mul(factor)
            .min(self.backoff_max)
    }
}

/// Everything [`plan`] decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    pub removed: bool,
    pub restore_requested: bool,
    /// A removed workspace's compute was stopped and its data settled.
    pub compute_released: bool,
    pub desired: DesiredState,
    pub generation: i64,
    /// The generation the recorded instance was started for.
    pub instance_generation: Option<i64>,
    pub seen: Seen,
    pub status: Status,
    /// Its runtime registers (the built-in one); a command never does.
    pub registers: bool,
    /// Its runtime registered since the instance started.
    pub registered: bool,
    pub started_at: Option<Millis>,
    pub last_heartbeat: Option<Millis>,
    /// `online`, or `degraded` while its volume is over its quota.
    pub healthy: Status,
    /// The control plane says why the running instance does not run as
    /// asked (a Kubernetes Pod Pending unschedulable, waiting on its
    /// volume or image): it is not online, whatever its runtime.
    pub held: bool,
}

/// The one thing to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// A restore was asked for and not finished: finish it.
    CompleteRestore,
    /// A removed workspace's compute still runs: stop it, settle its data.
    FinishRemoval,
    /// Record this status (never the one already recorded).
    SetStatus(Status),
    /// Start an instance of the current generation.
    Start,
    /// The generation moved on (a restart, a wake): stop the running
    /// instance, then start one.
    Restart,
    /// Stop the instance (never prune) and record this status.
    Stop(Status),
    /// The instance exited on its own: stop what is left of it (an
    /// ephemeral workspace's scratch data) and record it offline; start
    /// again at once only when `start` (new intent), else after the backoff.
    CleanUpCrash {
        start: bool,
    },
    /// The control plane does not know the instance: forget the record,
    /// and start again at once when `start`.
    Forget {
        start: bool,
    },
    /// It stopped heartbeating: stop it, offline; a start waits for the
    /// backoff.
    HeartbeatLost,
}

/// What [`plan`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub action: Action,
    /// The pacing to keep once the action is carried out.
    pub pacing: Pacing,
    /// When nothing else happens, look again at this time (a heartbeat
    /// window, a provision deadline or a backoff that runs out).
    pub wake_at: Option<Millis>,
}

fn desired_status(desired: DesiredState) -> Status {
    match desired {
        DesiredState::Running => Status::Online,
        DesiredState::Paused => Status::Paused,
        DesiredState::Hibernated => Status::Hibernated,
        DesiredState::Removed => Status::Removed,
    }
}

fn plan_of(action: Action, pacing: Pacing, wake_at: Option<Millis>) -> Plan {
    Plan {
        action,
        pacing,
        wake_at,
    }
}

/// Decides what to do with one workspace at `now`.
pub fn plan(f: &Facts, pacing: Pacing, t: &Timing, now: Millis) -> Plan {
    let mut p = pacing;
    if f.removed {
        let action = if f.restore_requested {
            Action::CompleteRestore
        } else if !f.compute_released {
            Action::FinishRemoval
        } else {
            Action::Nothing
        };
        return plan_of(action, Pacing::default(), None);
    }
    if f.desired != DesiredState::Running {
        let target = desired_status(f.desired);
        let action = if f.seen != Seen::Nothing {
            Action::Stop(target)
        } else if f.status != target {
            Action::SetStatus(target)
        } else {
            Action::Nothing
        };
        return plan_of(action, p, None);
    }
    // Running is desired.
    let current = f.instance_generation == Some(f.generation);
    match f.seen {
        Seen::Running if current => {
            let started = f.started_at.unwrap_or(now);
            if now - started >= t.stable_after {
                p.crashes = 0;
            }
            if !f.registers && !f.held {
                return set_status(f, f.healthy, p, None);
            }
            if f.registers && f.registered {
                let last = f.last_heartbeat.unwrap_or(started);
                let deadline = last + t.heartbeat_window;
                if now > deadline {
                    p.crashes += 1;
                    p.next_attempt = Some(now + t.backoff(p.crashes));
                    return plan_of(Action::HeartbeatLost, p, p.next_attempt);
                }
                return set_status(f, f.healthy, p, Some(deadline + 1));
            }
            let deadline = started + t.provision_timeout;
            if f.status == Status::Provisioning {
                if now > deadline {
                    // Compute and data are left alone: an operator may want
                    // to look.
                    return set_status(f, Status::Failed, p, None);
                }
                return plan_of(Action::Nothing, p, Some(held_wake(f, deadline, now)));
            }
            if !f.registers && f.status == f.healthy && now <= deadline {
                // A command's instance, recorded online at its start, that
                // the backend says cannot run yet (its Pod is not
                // scheduled): provisioning again, under the same deadline.
                return set_status(
                    f,
                    Status::Provisioning,
                    p,
                    Some(held_wake(f, deadline, now)),
                );
            }
            plan_of(Action::Nothing, p, None)
        }
        Seen::Running => {
            // A restart was asked for (the generation moved on).
            p.crashes = 0;
            p.next_attempt = None;
            p.failed_generation = None;
            p.attempted_generation = Some(f.generation);
            plan_of(Action::Restart, p, None)
        }
        Seen::Exited | Seen::Gone | Seen::Nothing => {
            if f.seen == Seen::Exited {
                p.crashes += 1;
                p.next_attempt = Some(now + t.backoff(p.crashes));
            }
            if p.attempted_generation.is_some_and(|g| g != f.generation) {
                // New intent: no waiting on an old backoff or failure.
                p.next_attempt = None;
                p.crashes = 0;
                p.failed_generation = None;
            }
            let failed = p.failed_generation == Some(f.generation);
            let waiting = p.next_attempt.is_some_and(|at| now < at);
            let start = !failed && !waiting;
            if start {
                p.attempted_generation = Some(f.generation);
            }
            let wake_at = if waiting { p.next_attempt } else { None };
            let action = match (f.seen, start) {
                (Seen::Exited, start) => Action::CleanUpCrash { start },
                (Seen::Gone, start) => Action::Forget { start },
                (_, true) => Action::Start,
                (_, false) => Action::Nothing,
            };
            plan_of(action, p, wake_at)
        }
    }
}

/// How often an instance its backend holds (a Pod not scheduled) is looked
/// at again before its deadline: nothing announces that its reason changed
/// or that it was let go, and the resync is too slow to wait for.
pub const HELD_RECHECK: Millis = 2_000;

/// When to look again at a provisioning instance: at its deadline, and
/// while its backend holds it, every [`HELD_RECHECK`] until then.
fn held_wake(f: &Facts, deadline: Millis, now: Millis) -> Millis {
    if f.held {
        (now + HELD_RECHECK).min(deadline + 1)
    } else {
        deadline + 1
    }
}

fn set_status(f: &Facts, status: Status, p: Pacing, wake_at: Option<Millis>) -> Plan {
    let action = if f.status == status {
        Action::Nothing
    } else {
        Action::SetStatus(status)
    };
    plan_of(action, p, wake_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use expect_test::{Expect, expect};

    const T: Timing = Timing {
        heartbeat_window: 15_000,
        provision_timeout: 120_000,
        backoff_base: 500,
        backoff_max: 60_000,
        stable_after: 60_000,
    };

    /// A running built-in workspace, registered and heartbeating, started
    /// at t=1000 for generation 1: the base every row of a table varies.
    fn online() -> Facts {
        Facts {
            removed: false,
            restore_requested: false,
            compute_released: true,
            desired: DesiredState::Running,
            generation: 1,
            instance_generation: Some(1),
            seen: Seen::Running,
            status: Status::Online,
            registers: true,
            registered: true,
            started_at: Some(1_000),
            last_heartbeat: Some(10_000),
            healthy: Status::Online,
            held: false,
        }
    }

    /// Renders one row per case: its name, then the plan.
    fn table(cases: &[(&str, Facts, Pacing, Millis)], expected: Expect) {
        let mut out = String::new();
        for (name, facts, pacing, now) in cases {
            let p = plan(facts, *pacing, &T, *now);
            out.push_str(&format!(
                "{name}: {:?}; crashes {}, next {:?}, failed {:?}, attempted {:?}; wake {:?}\n",
                p.action,
                p.pacing.crashes,
                p.pacing.next_attempt,
                p.pacing.failed_generation,
                p.pacing.attempted_generation,
                p.wake_at
            ));
        }
        expected.assert_eq(&out);
    }

    #[test]
    fn start_stop_and_restart() {
        let never_started = Facts {
            instance_generation: None,
            seen: Seen::Nothing,
            status: Status::Provisioning,
            registered: false,
            started_at: None,
            last_heartbeat: None,
            ..online()
        };
        let new_generation = Facts {
            generation: 2,
            ..online()
        };
        let paused_running = Facts {
            desired: DesiredState::Paused,
            ..online()
        };
        let paused_stopped = Facts {
            desired: DesiredState::Paused,
            instance_generation: None,
            seen: Seen::Nothing,
            status: Status::Paused,
            ..online()
        };
        let hibernated_recorded_online = Facts {
            desired: DesiredState::Hibernated,
            instance_generation: None,
            seen: Seen::Nothing,
            ..online()
        };
        let d = Pacing::default();
        table(
            &[
                ("first start", never_started, d, 2_000),
                ("healthy", online(), d, 11_000),
                ("restart asked", new_generation, d, 11_000),
                (
                    "restart clears a backoff",
                    new_generation,
                    Pacing {
                        crashes: 3,
                        next_attempt: Some(99_999),
                        ..d
                    },
                    11_000,
                ),
                ("pause a running one", paused_running, d, 11_000),
                ("paused and stopped", paused_stopped, d, 11_000),
                (
                    "hibernated, status behind",
                    hibernated_recorded_online,
                    d,
                    11_000,
                ),
            ],
            expect![[r#"
                first start: Start; crashes 0, next None, failed None, attempted Some(1); wake None
                healthy: Nothing; crashes 0, next None, failed None, attempted None; wake Some(25001)
                restart asked: Restart; crashes 0, next None, failed None, attempted Some(2); wake None
                restart clears a backoff: Restart; crashes 0, next None, failed None, attempted Some(2); wake None
                pause a running one: Stop(Paused); crashes 0, next None, failed None, attempted None; wake None
                paused and stopped: Nothing; crashes 0, next None, failed None, attempted None; wake None
                hibernated, status behind: SetStatus(Hibernated); crashes 0, next None, failed None, attempted None; wake None
            "#]],
        );
    }

    #[test]
    fn crashes_back_off_and_new_intent_skips_the_wait() {
        let exited = Facts {
            seen: Seen::Exited,
            ..online()
        };
        let stopped_after_crash = Facts {
            instance_generation: None,
            seen: Seen::Nothing,
            status: Status::Offline,
            registered: false,
            started_at: None,
            last_heartbeat: None,
            ..online()
        };
        let after_one = Pacing {
            crashes: 1,
            next_attempt: Some(20_500),
            attempted_generation: Some(1),
            failed_generation: None,
        };
        let after_three = Pacing {
            crashes: 3,
            next_attempt: Some(22_000),
            attempted_generation: Some(1),
            failed_generation: None,
        };
        let new_intent = Facts {
            generation: 2,
            ..stopped_after_crash
        };
        let long_run = Facts {
            started_at: Some(1_000),
            last_heartbeat: Some(70_000),
            ..online()
        };
        table(
            &[
                ("first crash", exited, Pacing::default(), 20_000),
                (
                    "third crash",
                    exited,
                    Pacing {
                        crashes: 2,
                        ..after_one
                    },
                    20_000,
                ),
                (
                    "waiting out the backoff",
                    stopped_after_crash,
                    after_one,
                    20_100,
                ),
                ("backoff over", stopped_after_crash, after_one, 20_500),
                (
                    "new intent during a backoff",
                    new_intent,
                    after_three,
                    20_100,
                ),
                (
                    "a stable run resets the count",
                    long_run,
                    after_three,
                    75_000,
                ),
                (
                    "crashed with new intent",
                    Facts {
                        generation: 2,
                        ..exited
                    },
                    after_one,
                    20_000,
                ),
            ],
            expect![[r#"
                first crash: CleanUpCrash { start: false }; crashes 1, next Some(20500), failed None, attempted None; wake Some(20500)
                third crash: CleanUpCrash { start: false }; crashes 3, next Some(22000), failed None, attempted Some(1); wake Some(22000)
                waiting out the backoff: Nothing; crashes 1, next Some(20500), failed None, attempted Some(1); wake Some(20500)
                backoff over: Start; crashes 1, next Some(20500), failed None, attempted Some(1); wake None
                new intent during a backoff: Start; crashes 0, next None, failed None, attempted Some(2); wake None
                a stable run resets the count: Nothing; crashes 0, next Some(22000), failed None, attempted Some(1); wake Some(85001)
                crashed with new intent: CleanUpCrash { start: true }; crashes 0, next None, failed None, attempted Some(2); wake None
            "#]],
        );
    }

    #[test]
    fn heartbeats_provisioning_and_failed_starts() {
        let silent = Facts {
            last_heartbeat: Some(10_000),
            ..online()
        };
        let unregistered = Facts {
            registered: false,
            last_heartbeat: None,
            status: Status::Provisioning,
            ..online()
        };
        let command = Facts {
            registers: false,
            registered: false,
            last_heartbeat: None,
            status: Status::Provisioning,
            ..online()
        };
        let over_quota = Facts {
            healthy: Status::Degraded,
            ..online()
        };
        let failed_start = Facts {
            instance_generation: None,
            seen: Seen::Nothing,
            status: Status::Failed,
            registered: false,
            started_at: None,
            last_heartbeat: None,
            ..online()
        };
        let gone = Facts {
            seen: Seen::Gone,
            ..online()
        };
        let failed = Pacing {
            failed_generation: Some(1),
            attempted_generation: Some(1),
            ..Pacing::default()
        };
        table(
            &[
                (
                    "heartbeat within the window",
                    silent,
                    Pacing::default(),
                    25_000,
                ),
                ("heartbeat lost", silent, Pacing::default(), 25_001),
                (
                    "registering in time",
                    unregistered,
                    Pacing::default(),
                    60_000,
                ),
                (
                    "provision timeout",
                    unregistered,
                    Pacing::default(),
                    121_001,
                ),
                (
                    "a command is online at once",
                    command,
                    Pacing::default(),
                    2_000,
                ),
                ("over quota", over_quota, Pacing::default(), 11_000),
                (
                    "failed start waits for new intent",
                    failed_start,
                    failed,
                    50_000,
                ),
                ("gone, not a crash", gone, Pacing::default(), 11_000),
                ("gone while failed", gone, failed, 11_000),
            ],
            expect![[r#"
                heartbeat within the window: Nothing; crashes 0, next None, failed None, attempted None; wake Some(25001)
                heartbeat lost: HeartbeatLost; crashes 1, next Some(25501), failed None, attempted None; wake Some(25501)
                registering in time: Nothing; crashes 0, next None, failed None, attempted None; wake Some(121001)
                provision timeout: SetStatus(Failed); crashes 0, next None, failed None, attempted None; wake None
                a command is online at once: SetStatus(Online); crashes 0, next None, failed None, attempted None; wake None
                over quota: SetStatus(Degraded); crashes 0, next None, failed None, attempted None; wake Some(25001)
                failed start waits for new intent: Nothing; crashes 0, next None, failed Some(1), attempted Some(1); wake None
                gone, not a crash: Forget { start: true }; crashes 0, next None, failed None, attempted Some(1); wake None
                gone while failed: Forget { start: false }; crashes 0, next None, failed Some(1), attempted Some(1); wake None
            "#]],
        );
    }

    /// A running instance the backend says cannot run yet (a Pod that no
    /// node can take, waiting on its claim or its image) is not online,
    /// whatever its runtime, and fails at the provision deadline; once
    /// nothing holds it, a command is online again.
    #[test]
    fn an_instance_held_by_its_backend_is_provisioning_until_the_deadline() {
        let held_command_online = Facts {
            registers: false,
            registered: false,
            last_heartbeat: None,
            status: Status::Online,
            held: true,
            ..online()
        };
        let held_command_provisioning = Facts {
            status: Status::Provisioning,
            ..held_command_online
        };
        let released_command = Facts {
            held: false,
            ..held_command_provisioning
        };
        let held_builtin = Facts {
            registered: false,
            last_heartbeat: None,
            status: Status::Provisioning,
            held: true,
            ..online()
        };
        let held_but_registered = Facts {
            held: true,
            ..online()
        };
        let d = Pacing::default();
        table(
            &[
                ("a command held", held_command_online, d, 2_000),
                (
                    "a command held, within the deadline",
                    held_command_provisioning,
                    d,
                    60_000,
                ),
                (
                    "a command held past the deadline",
                    held_command_provisioning,
                    d,
                    121_001,
                ),
                (
                    "a command held past the deadline, recorded online",
                    held_command_online,
                    d,
                    121_001,
                ),
                ("a command no longer held", released_command, d, 60_000),
                ("the built-in runtime held", held_builtin, d, 60_000),
                (
                    "the built-in runtime held past the deadline",
                    held_builtin,
                    d,
                    121_001,
                ),
                (
                    "a registered runtime heartbeats whatever is said",
                    held_but_registered,
                    d,
                    11_000,
                ),
            ],
            expect![[r#"
                a command held: SetStatus(Provisioning); crashes 0, next None, failed None, attempted None; wake Some(4000)
                a command held, within the deadline: Nothing; crashes 0, next None, failed None, attempted None; wake Some(62000)
                a command held past the deadline: SetStatus(Failed); crashes 0, next None, failed None, attempted None; wake None
                a command held past the deadline, recorded online: Nothing; crashes 0, next None, failed None, attempted None; wake None
                a command no longer held: SetStatus(Online); crashes 0, next None, failed None, attempted None; wake None
                the built-in runtime held: Nothing; crashes 0, next None, failed None, attempted None; wake Some(62000)
                the built-in runtime held past the deadline: SetStatus(Failed); crashes 0, next None, failed None, attempted None; wake None
                a registered runtime heartbeats whatever is said: Nothing; crashes 0, next None, failed None, attempted None; wake Some(25001)
            "#]],
        );
    }

    #[test]
    fn removal_and_restore() {
        let removed_running = Facts {
            removed: true,
            compute_released: false,
            desired: DesiredState::Removed,
            status: Status::Removed,
            ..online()
        };
        let removed_done = Facts {
            compute_released: true,
            instance_generation: None,
            seen: Seen::Nothing,
            ..removed_running
        };
        let restoring = Facts {
            restore_requested: true,
            ..removed_done
        };
        let restoring_unreleased = Facts {
            restore_requested: true,
            ..removed_running
        };
        let d = Pacing {
            crashes: 2,
            ..Pacing::default()
        };
        table(
            &[
                ("removed, compute running", removed_running, d, 1),
                ("removed and settled", removed_done, d, 1),
                ("restore asked", restoring, d, 1),
                (
                    "restore asked before the stop finished",
                    restoring_unreleased,
                    d,
                    1,
                ),
            ],
            expect![[r#"
                removed, compute running: FinishRemoval; crashes 0, next None, failed None, attempted None; wake None
                removed and settled: Nothing; crashes 0, next None, failed None, attempted None; wake None
                restore asked: CompleteRestore; crashes 0, next None, failed None, attempted None; wake None
                restore asked before the stop finished: CompleteRestore; crashes 0, next None, failed None, attempted None; wake None
            "#]],
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let t = Timing {
            backoff_base: 100,
            backoff_max: 1_000,
            ..T
        };
        let got: Vec<Millis> = (1..=6).map(|n| t.backoff(n)).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(t.backoff(1000), 1000);
    }
}
