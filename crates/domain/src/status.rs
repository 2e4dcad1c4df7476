//! Workspace statuses (observed), desired states (intent) and volume states.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "unknown {} {other:?}; expected one of: {}",
                        stringify!($name),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }
    };
}

text_enum! {
    /// What the operator last saw of a workspace (SPEC §2).
    Status {
        Provisioning = "provisioning",
        Online = "online",
        Offline = "offline",
        Degraded = "degraded",
        Failed = "failed",
        Paused = "paused",
        Hibernated = "hibernated",
        Removed = "removed",
    }
}

text_enum! {
    /// What the operator asked for. The reconciler drives compute toward it.
    DesiredState {
        Running = "running",
        Paused = "paused",
        Hibernated = "hibernated",
        Removed = "removed",
    }
}

text_enum! {
    /// The life of a data volume (SPEC §4).
    VolumeState {
        Active = "active",
        Retained = "retained",
        ErasePending = "erase_pending",
        Erasing = "erasing",
        Erased = "erased",
    }
}

impl VolumeState {
    /// Whether the files of a volume in this state may still be brought back.
    pub fn is_recoverable(self) -> bool {
        matches!(
            self,
            VolumeState::Active | VolumeState::Retained | VolumeState::ErasePending
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>(), Ok(*s));
        }
        for s in VolumeState::ALL {
            assert_eq!(s.as_str().parse::<VolumeState>(), Ok(*s));
        }
        assert!("Online".parse::<Status>().is_err());
    }
}
