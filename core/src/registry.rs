//! The shard's registry of its connections: each is named by a
//! [`ConnRef`] — its slot, and a generation that tells a slot's new
//! connection from the one it had before — so that answers arriving after a
//! connection closed (an acknowledgement from another shard, a position for
//! a subscription) find nothing rather than its successor. What a
//! connection may do (its permit) is its own; the registry only says which
//! are here.

use std::rc::Rc;

use slab::Slab;

use crate::{publication::ConnRef, subscriptions::Subscriber};

/// The connections of one shard, by slot.
pub struct Registry<C> {
    conns: Slab<Rc<C>>,
    /// The generation handed to the last connection registered.
    last_gen: u32,
}

impl<C> Default for Registry<C> {
    fn default() -> Self {
        Registry {
            conns: Slab::new(),
            last_gen: 0,
        }
    }
}

impl<C: Subscriber> Registry<C> {
    /// Registers the connection `make` builds under the name it is given.
    pub fn register(&mut self, make: impl FnOnce(ConnRef) -> C) -> Rc<C> {
        self.last_gen = self.last_gen.wrapping_add(1);
        let entry = self.conns.vacant_entry();
        let id = ConnRef {
            key: entry.key() as u32,
            gen: self.last_gen,
        };
        let conn = Rc::new(make(id));
        entry.insert(conn.clone());
        conn
    }

    /// The connection `id` names, if it is still registered.
    pub fn get(&self, id: ConnRef) -> Option<&Rc<C>> {
        (self.conns.get(id.key as usize)).filter(|c| c.conn_ref() == id)
    }

    /// Removes the connection `id` names; `false` if it was not there (a
    /// successor in its slot stays).
    pub fn remove(&mut self, id: ConnRef) -> bool {
        let here = self.get(id).is_some();
        if here {
            self.conns.remove(id.key as usize);
        }
        here
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Every registered connection.
    pub fn iter(&self) -> impl Iterator<Item = &Rc<C>> {
        self.conns.iter().map(|(_, conn)| conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codec::Codec, testing::TestConn};

    fn registered(registry: &mut Registry<TestConn>) -> ConnRef {
        registry
            .register(|id| {
                let mut conn = TestConn::new(id.key, Codec::JSON);
                conn.id = id;
                conn
            })
            .id
    }

    #[test]
    fn a_registered_connection_is_found_by_its_name() {
        let mut registry = Registry::default();
        let (a, b) = (registered(&mut registry), registered(&mut registry));
        assert_ne!(a, b);
        assert_eq!(registry.get(a).map(|c| c.id), Some(a));
        assert_eq!(registry.get(b).map(|c| c.id), Some(b));
        assert_eq!(registry.len(), 2);
        assert_eq!(registry.iter().count(), 2);
    }

    #[test]
    fn a_slots_next_connection_is_not_its_predecessor() {
        let mut registry = Registry::default();
        let old = registered(&mut registry);
        assert!(registry.remove(old));
        let new = registered(&mut registry);
        assert_eq!(new.key, old.key, "the slot is reused");
        assert!(
            registry.get(old).is_none(),
            "an answer to the old one finds nothing"
        );
        assert!(!registry.remove(old), "and cannot remove the new one");
        assert!(registry.get(new).is_some());
    }

    #[test]
    fn the_registry_empties() {
        let mut registry = Registry::default();
        let ids: Vec<_> = (0..3).map(|_| registered(&mut registry)).collect();
        for id in ids {
            assert!(!registry.is_empty());
            assert!(registry.remove(id));
        }
        assert!(registry.is_empty());
    }
}
