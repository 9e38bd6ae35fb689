//! What one connection may do: everything (anonymous mode), subscribing only
//! (the admin listener), what its token grants, or nothing but `auth` while
//! it has not sent one.
//! Checked on every `sub` and `pub` (a few string comparisons) and replaced
//! when the client refreshes its token.

use std::rc::Rc;

use crate::{
    channel::Access,
    protocol::{ErrorCode, OpError, RequestId},
    security::token::Grant,
};

/// A connection's permissions.
#[derive(Debug, Clone)]
pub enum Permit {
    /// Anonymous mode: every channel, both ways.
    Everything,
    /// The admin listener (the dashboard's feed): subscribe to anything,
    /// publish nothing.
    ReadOnly,
    /// What a verified token grants, until it expires.
    Token(Rc<Grant>),
    /// Tokens are required and this connection has not sent one yet: only
    /// `auth` is accepted, until the auth deadline.
    AwaitingAuth,
}

impl Permit {
    /// Whether `access` to `channel` is allowed; the refusal is an `err`.
    pub fn check<'a>(
        &self,
        access: Access,
        channel: &str,
        id: Option<RequestId<'a>>,
    ) -> Result<(), OpError<'a>> {
        match self {
            Permit::Everything => Ok(()),
            Permit::ReadOnly if access == Access::Subscribe => Ok(()),
            Permit::ReadOnly => Err(OpError::new(
                ErrorCode::Forbidden,
                "the admin address is read-only: publish on the public address",
                id,
            )),
            Permit::Token(grant) if grant.allows(access, channel) => Ok(()),
            Permit::Token(_) => Err(OpError::new(
                ErrorCode::Forbidden,
                match access {
                    Access::Subscribe => "the token does not allow subscribing to this channel",
                    Access::Publish => "the token does not allow publishing to this channel",
                },
                id,
            )),
            Permit::AwaitingAuth => Err(OpError::new(
                ErrorCode::Unauthorized,
                "authenticate first: {\"op\":\"auth\",\"token\":...}",
                id,
            )),
        }
    }

    /// The user the connection authenticated as, if it did.
    pub fn user(&self) -> Option<&str> {
        match self {
            Permit::Token(grant) => Some(&grant.user),
            _ => None,
        }
    }
}
