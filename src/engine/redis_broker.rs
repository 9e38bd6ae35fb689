//! The Redis engine as a shard's [`Broker`]: the shard's links, one per
//! `--redis-url`, each channel carried by one of them (a stable hash of
//! its name). Redis orders every publication (the publish script's offset
//! is the channel's `seq` on every node), keeps the history (the shard
//! keeps none), remembers idempotency keys, holds every node's presence
//! members and its occupancy entries (refreshed every third of the
//! presence TTL), and carries control messages on the first link. What
//! the links answer reaches the shard through [`RedisHost`].

use std::{rc::Rc, time::Duration};

use futures_lite::future::BoxedLocal;

use super::{
    broker::{Asked, Broker, OrderedBy, PositionAsk, PresenceRequest, PublishTicket},
    redis::{RedisHost, RedisLink},
};
use crate::publication::{Payload, Skip};

/// One shard's Redis links as its broker.
pub(crate) struct RedisBroker {
    links: Vec<Rc<RedisLink>>,
    /// `--presence-ttl`: this node's members and occupancy entries are
    /// refreshed every third of it.
    presence_ttl: Duration,
}

impl RedisBroker {
    /// The broker over `links` (in `--redis-url` order).
    pub(crate) fn new(links: Vec<Rc<RedisLink>>, presence_ttl: Duration) -> Self {
        RedisBroker {
            links,
            presence_ttl,
        }
    }

    /// The link that carries `name`: a stable hash of the name over the
    /// `--redis-url`s, independent of the node's shard count (salted, so
    /// it does not follow channel ownership inside a node).
    fn link_for(&self, name: &str) -> Option<&Rc<RedisLink>> {
        if self.links.len() <= 1 {
            return self.links.first();
        }
        let hash = crate::channel::fnv1a(b"redis\0".iter().chain(name.as_bytes()));
        self.links.get((hash % self.links.len() as u64) as usize)
    }
}

impl<H: RedisHost + 'static> Broker<H> for RedisBroker {
    fn ordered_by(&self) -> OrderedBy {
        OrderedBy::Broker
    }

    fn holds_history(&self) -> bool {
        true
    }

    fn submit(
        &self,
        name: &str,
        payload: &Payload,
        skip: Option<Skip>,
        ticket: PublishTicket,
    ) -> Result<bool, PublishTicket> {
        match self.link_for(name) {
            Some(link) => link.publish(name, payload, skip, ticket),
            None => Err(ticket),
        }
    }

    fn interest(&self, name: &str, wanted: bool) {
        if let Some(link) = self.link_for(name) {
            link.want(name, wanted);
        }
    }

    fn position(&self, ask: PositionAsk, after: Option<u64>) -> Asked<PositionAsk> {
        let Some(link) = self.link_for(ask.channel()) else {
            return Asked::Local(ask);
        };
        match link.position(ask, after) {
            Ok(()) => Asked::Sent,
            Err(ask) => Asked::Unavailable(ask),
        }
    }

    fn presence_change(&self, name: &str, join: bool, conn: &str, member: &[u8]) {
        if let Some(link) = self.link_for(name) {
            link.presence_change(name, join, conn, member);
        }
    }

    fn presence_refresh(&self, name: &str, members: &[(&str, &[u8])]) {
        if let Some(link) = self.link_for(name) {
            link.presence_refresh(name, members);
        }
    }

    fn presence_query(&self, request: PresenceRequest) -> Asked<PresenceRequest> {
        let Some(link) = self.link_for(&request.ch) else {
            return Asked::Local(request);
        };
        match link.presence_query(request) {
            Ok(()) => Asked::Sent,
            Err(request) => Asked::Unavailable(request),
        }
    }

    fn node_occupancy(&self, name: &str, on: bool, answer: bool) -> bool {
        self.link_for(name)
            .is_some_and(|link| link.node_occupancy(name, on, answer))
    }

    fn refresh_every(&self) -> Option<Duration> {
        Some(self.presence_ttl / 3)
    }

    /// On the first link, which every node's first link listens on.
    fn control(&self, message: &[u8]) -> bool {
        self.links.first().is_some_and(|link| link.control(message))
    }

    fn is_up(&self) -> bool {
        self.links.iter().all(|link| link.is_up())
    }

    fn tasks(&self, host: &Rc<H>) -> Vec<BoxedLocal<()>> {
        self.links
            .iter()
            .map(|link| {
                let (link, host) = (link.clone(), host.clone());
                Box::pin(async move { link.run(&*host).await }) as BoxedLocal<()>
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{
            addr::BrokerAddr,
            record::Record,
            redis::{PresenceAnswer, RedisSettings, Standing},
            Refused,
        },
        protocol::{PayloadKind, PresenceAsk},
        publication::{Reply, ReplyId},
    };

    /// A broker of `count` links that never connected (nothing is written).
    fn broker(count: usize) -> RedisBroker {
        let settings = Rc::new(RedisSettings {
            prefix: "sc".into(),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
            meta_ttl: Duration::from_secs(60),
            node: 1,
            timeout: Duration::from_secs(3),
            replay_bytes: 1 << 20,
            presence_ttl: Duration::from_secs(30),
            idempotency_window: Duration::from_secs(120),
        });
        let links = (0..count)
            .map(|index| {
                let url = format!("redis://127.0.0.1:{}", 6379 + index);
                let addr = BrokerAddr::parse(&url, "redis").unwrap();
                let socket = ([127, 0, 0, 1], 6379 + index as u16).into();
                Rc::new(RedisLink::new(index, addr, socket, settings.clone()))
            })
            .collect();
        RedisBroker::new(links, Duration::from_secs(30))
    }

    /// The broker as the shard holds it.
    fn dyn_broker(count: usize) -> Box<dyn Broker<Host>> {
        Box::new(broker(count))
    }

    /// A host nobody calls (the links never run here).
    struct Host(crate::stats::Stats);

    impl RedisHost for Host {
        fn on_message(&self, _: &str, _: u64, _: &str, _: Record) {}
        fn on_published(&self, _: PublishTicket, _: Result<u64, Refused>) {}
        fn on_position(&self, _: PositionAsk, _: Result<Standing, Refused>) {}
        fn on_link(&self, _: usize, _: bool) {}
        fn on_backlog(&self, _: bool) {}
        fn resume_from(&self, _: &str) -> Option<u64> {
            None
        }
        fn on_presence(&self, _: PresenceRequest, _: Result<PresenceAnswer, Refused>) {}
        fn on_presence_event(&self, _: &str, _: bool, _: &[u8]) {}
        fn on_occupancy(&self, _: &str, _: bool, _: Option<(bool, u64)>) {}
        fn on_control(&self, _: &[u8]) {}
        fn stats(&self) -> &crate::stats::Stats {
            &self.0
        }
    }

    #[test]
    fn redis_orders_and_keeps_the_history() {
        let broker = dyn_broker(1);
        assert_eq!(broker.ordered_by(), OrderedBy::Broker);
        assert!(broker.holds_history());
        assert_eq!(broker.refresh_every(), Some(Duration::from_secs(10)));
        assert_eq!(broker.tasks(&Rc::new(Host(Default::default()))).len(), 1);
    }

    #[test]
    fn while_down_every_request_comes_back_unsent() {
        let broker = dyn_broker(2);
        assert!(!broker.is_up());
        let payload = Payload::copy_of(PayloadKind::Json, b"1");
        let ticket = PublishTicket {
            from: 3,
            reply: Reply::None,
        };
        let back = broker.submit("orders", &payload, None, ticket);
        assert!(matches!(back, Err(PublishTicket { from: 3, .. })));
        let ask = PositionAsk::Fill {
            ch: "orders".into(),
        };
        assert!(matches!(
            broker.position(ask, Some(1)),
            Asked::Unavailable(PositionAsk::Fill { .. })
        ));
        let request = PresenceRequest {
            ch: "room".into(),
            to: ReplyId::new(0, 0, 0),
            ask: PresenceAsk::Count,
        };
        assert!(matches!(
            broker.presence_query(request),
            Asked::Unavailable(_)
        ));
        assert!(!broker.node_occupancy("room", true, true));
        assert!(!broker.control(b"0000000000000001:{}"));
    }

    #[test]
    fn each_channel_keeps_one_link_and_the_channels_spread_over_them() {
        let broker = broker(3);
        let index = |name: &str| broker.link_for(name).map(|link| link.index);
        let names: Vec<String> = (0..64).map(|n| format!("ch{n}")).collect();
        let first: Vec<_> = names.iter().map(|name| index(name)).collect();
        let again: Vec<_> = names.iter().map(|name| index(name)).collect();
        assert_eq!(first, again);
        for link in 0..3 {
            assert!(first.contains(&Some(link)), "link {link} carries nothing");
        }
        assert_eq!(self::broker(1).link_for("any").map(|l| l.index), Some(0));
        assert!(self::broker(0).link_for("any").is_none());
    }
}
