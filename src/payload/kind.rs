//! The webhook event kinds and their wire names.

use std::fmt;

/// One kind of webhook, named on the wire as the application's documentation names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    NewJobCreated,
    StageChanged,
    JobFirstTimeModeled,
    AddressChanged,
    JobTransferred,
    JobTransferredToOtherCompany,
    ChatPosted,
    HesScoreObtained,
    TicketStatusChanged,
    Ping,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::NewJobCreated,
        EventKind::StageChanged,
        EventKind::JobFirstTimeModeled,
        EventKind::AddressChanged,
        EventKind::JobTransferred,
        EventKind::JobTransferredToOtherCompany,
        EventKind::ChatPosted,
        EventKind::HesScoreObtained,
        EventKind::TicketStatusChanged,
        EventKind::Ping,
    ];

    /// Returns the wire name, such as `STAGE_CHANGED`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::NewJobCreated => "NEW_JOB_CREATED",
            EventKind::StageChanged => "STAGE_CHANGED",
            EventKind::JobFirstTimeModeled => "JOB_FIRST_TIME_MODELED",
            EventKind::AddressChanged => "ADDRESS_CHANGED",
            EventKind::JobTransferred => "JOB_TRANSFERRED",
            EventKind::JobTransferredToOtherCompany => "JOB_TRANSFERRED_TO_OTHER_COMPANY",
            EventKind::ChatPosted => "CHAT_POSTED",
            EventKind::HesScoreObtained => "HES_SCORE_OBTAINED",
            EventKind::TicketStatusChanged => "TICKET_STATUS_CHANGED",
            EventKind::Ping => "PING",
        }
    }

    /// Returns the kind of a wire name, or `None` for an unknown name.
    pub fn from_name(name: &str) -> Option<EventKind> {
        EventKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }

    /// Returns the key of the payload's array, such as `jobs` or `hesData`.
    pub fn array_key(self) -> &'static str {
        match self {
            EventKind::ChatPosted => "data",
            EventKind::HesScoreObtained => "hesData",
            EventKind::TicketStatusChanged => "tickets",
            _ => "jobs",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind), "{kind}");
        }
        assert_eq!(EventKind::from_name("stage_changed"), None);
    }
}
