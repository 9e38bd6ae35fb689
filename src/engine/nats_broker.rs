//! The NATS engine as a shard's [`Broker`]: its one link. The owner orders
//! each publication itself, as the memory engine does, after sending it to
//! the other nodes (refused while NATS cannot be reached); the other
//! nodes' publications come in through [`NatsHost`] and are ordered as
//! local ones. NATS holds nothing: history, presence and occupancy stay
//! on each node (the trait's defaults).

use std::rc::Rc;

use futures_lite::future::BoxedLocal;

use super::{
    broker::{Broker, Forwarded, OrderedBy},
    nats::{NatsHost, NatsLink},
    Refused,
};
use crate::publication::{Payload, Skip};

/// One shard's NATS link as its broker.
pub(crate) struct NatsBroker {
    link: Rc<NatsLink>,
}

impl NatsBroker {
    /// The broker over `link`.
    pub(crate) fn new(link: Rc<NatsLink>) -> Self {
        NatsBroker { link }
    }
}

impl<H: NatsHost + 'static> Broker<H> for NatsBroker {
    fn ordered_by(&self) -> OrderedBy {
        OrderedBy::Owner
    }

    fn forward(
        &self,
        name: &str,
        payload: &Payload,
        skip: Option<Skip>,
    ) -> Result<Forwarded, Refused> {
        match self.link.publish(name, payload, skip) {
            true => Ok(Forwarded::Sent),
            false => Err(Refused::Unavailable),
        }
    }

    fn interest(&self, name: &str, wanted: bool) {
        self.link.want(name, wanted);
    }

    fn control(&self, message: &[u8]) -> bool {
        self.link.control(message)
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }

    fn tasks(&self, host: &Rc<H>) -> Vec<BoxedLocal<()>> {
        let (link, host) = (self.link.clone(), host.clone());
        vec![Box::pin(async move { link.run(&*host).await })]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        engine::{addr::BrokerAddr, broker::Asked, broker::PositionAsk, record::Record},
        protocol::PayloadKind,
        stats::Stats,
    };

    /// A host nobody calls (the link never runs here).
    struct Host(Stats);

    impl NatsHost for Host {
        fn on_remote(&self, _: &str, _: Record) {}
        fn on_link(&self, _: usize, _: bool) {}
        fn on_control(&self, _: &[u8]) {}
        fn stats(&self) -> &Stats {
            &self.0
        }
    }

    /// A broker whose link never connected.
    fn broker() -> Box<dyn Broker<Host>> {
        let addr = BrokerAddr::parse("nats://127.0.0.1:4222", "nats").unwrap();
        let link = NatsLink::new(addr, ([127, 0, 0, 1], 4222).into(), "sc", 1, 0);
        Box::new(NatsBroker::new(Rc::new(link)))
    }

    #[test]
    fn the_owner_orders_and_nats_holds_nothing() {
        let broker = broker();
        assert_eq!(broker.ordered_by(), OrderedBy::Owner);
        assert!(!broker.holds_history());
        assert_eq!(broker.refresh_every(), None);
        let ask = PositionAsk::Fill {
            ch: "orders".into(),
        };
        assert!(matches!(broker.position(ask, None), Asked::Local(_)));
        assert!(!broker.node_occupancy("room", true, true));
        assert_eq!(broker.tasks(&Rc::new(Host(Stats::default()))).len(), 1);
    }

    #[test]
    fn while_down_a_publication_is_refused_before_it_is_ordered() {
        let broker = broker();
        assert!(!broker.is_up());
        let payload = Payload::copy_of(PayloadKind::Json, b"1");
        assert_eq!(
            broker.forward("orders", &payload, None),
            Err(Refused::Unavailable)
        );
        assert!(!broker.control(b"0000000000000001:{}"));
        // Kept for the reconnect.
        broker.interest("orders", true);
    }
}
