//! A shard's questions still waiting for their answers: one table per
//! shard for every kind of question it asks other shards (or the broker,
//! through a channel's owner). Asking takes an entry and names it with a
//! [`ReplyId`] — the shard, the entry's slot and a generation — that the
//! question carries and its answer names again; [`Pending::settle`] hands
//! the answer to whoever is behind the entry, here:
//!
//! - a task waiting for it ([`Pending::wait`]): the [`Waiting`] guard it
//!   holds receives answers of the type it asked for, as many as it said
//!   it would take (an HTTP batch publish takes one per publication, a
//!   scrape one snapshot per shard), and frees the entry when the task
//!   stops waiting, whether it got them all, gave up or was dropped;
//! - or a note of what to do with the answer when it comes
//!   ([`Pending::note`]: a subscription waiting for its position, a
//!   connection's `presence` op), handed back with the answer and freed.
//!
//! A slot is reused once freed, under a new generation: an answer for a
//! question given up on reaches nobody, not the question that took its
//! slot since.

use std::{
    cell::{Cell, RefCell},
    marker::PhantomData,
    time::Duration,
};

use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use slab::Slab;

pub(crate) use shardcast_core::publication::ReplyId;

/// One shard's table of questions waiting for answers of type `A`; those
/// that no task waits for keep a note of type `N`.
pub(crate) struct Pending<A, N> {
    shard: u16,
    entries: RefCell<Slab<Entry<A, N>>>,
    /// The generation of the last entry taken.
    generation: Cell<u32>,
}

struct Entry<A, N> {
    generation: u32,
    asker: Asker<A, N>,
}

enum Asker<A, N> {
    /// A task waiting, with room for the answers it takes.
    Task(LocalSender<A>),
    /// What to do with the answer.
    Note(N),
}

impl<A, N> Pending<A, N> {
    /// The table of shard `shard`.
    pub(crate) fn new(shard: usize) -> Self {
        Pending {
            // Shards are fewer than `owner::MAX_SHARDS`.
            shard: shard as u16,
            entries: RefCell::new(Slab::new()),
            generation: Cell::new(0),
        }
    }

    fn take(&self, asker: Asker<A, N>) -> ReplyId {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let slot = self
            .entries
            .borrow_mut()
            .insert(Entry { generation, asker });
        ReplyId::new(self.shard, slot as u32, generation)
    }

    /// A question the calling task waits on, for up to `answers` answers
    /// of type `T` (answers of another type are dropped). Its entry is
    /// freed when the returned guard is.
    pub(crate) fn wait<T: TryFrom<A>>(&self, answers: usize) -> Waiting<'_, A, N, T> {
        let (sender, receiver) = local_channel::new_bounded(answers.max(1));
        let id = self.take(Asker::Task(sender));
        Waiting {
            table: self,
            id,
            receiver,
            reply: PhantomData,
        }
    }

    /// A question nobody waits on: its answer is acted on as `note` says
    /// when it comes (see [`Pending::settle`]). The entry lives until then.
    pub(crate) fn note(&self, note: N) -> ReplyId {
        self.take(Asker::Note(note))
    }

    /// An answer came for `id`: handed to the task waiting for it, or,
    /// for a noted question, returned with its note (and the entry freed).
    /// An answer for a question given up on, or one more than the task
    /// takes, goes nowhere.
    pub(crate) fn settle(&self, id: ReplyId, answer: A) -> Option<(N, A)> {
        if id.shard() != usize::from(self.shard) {
            return None;
        }
        let mut entries = self.entries.borrow_mut();
        let slot = id.slot() as usize;
        match entries.get(slot) {
            Some(entry) if entry.generation == id.generation() => match &entry.asker {
                Asker::Task(sender) => {
                    // Full: more answers than the task takes.
                    let _ = sender.try_send(answer);
                    None
                }
                Asker::Note(_) => match entries.remove(slot).asker {
                    Asker::Note(note) => Some((note, answer)),
                    Asker::Task(_) => None,
                },
            },
            _ => None,
        }
    }

    /// Questions waiting for answers.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.borrow().len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frees `id`'s entry, unless it was freed already (and maybe taken
    /// again under another generation).
    fn free(&self, id: ReplyId) {
        let mut entries = self.entries.borrow_mut();
        let slot = id.slot() as usize;
        if entries
            .get(slot)
            .is_some_and(|e| e.generation == id.generation())
        {
            entries.remove(slot);
        }
    }
}

/// A task's wait for the answers to its question, typed `T`; frees the
/// question's entry when dropped.
pub(crate) struct Waiting<'a, A, N, T> {
    table: &'a Pending<A, N>,
    id: ReplyId,
    receiver: LocalReceiver<A>,
    reply: PhantomData<fn() -> T>,
}

impl<A, N, T: TryFrom<A>> Waiting<'_, A, N, T> {
    /// What the question carries for its answers to come back here.
    pub(crate) fn id(&self) -> ReplyId {
        self.id
    }

    /// The next answer. Waits for as long as it takes: bound the wait
    /// with a timeout.
    pub(crate) async fn next(&self) -> Option<T> {
        while let Some(answer) = self.receiver.recv().await {
            if let Ok(reply) = T::try_from(answer) {
                return Some(reply);
            }
        }
        None
    }

    /// Hands `take` up to `count` answers, those that come within `wait`.
    pub(crate) async fn collect_within(
        &self,
        count: usize,
        wait: Duration,
        mut take: impl FnMut(T),
    ) {
        let _ = glommio::timer::timeout(wait, async {
            for _ in 0..count {
                match self.next().await {
                    Some(reply) => take(reply),
                    None => break,
                }
            }
            Ok(())
        })
        .await;
    }
}

impl<A, N, T> Drop for Waiting<'_, A, N, T> {
    fn drop(&mut self) {
        self.table.free(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers of two kinds, as a shard's are.
    #[derive(Debug, PartialEq)]
    enum Answer {
        Seq(u64),
        Word(&'static str),
    }

    #[derive(Debug, PartialEq)]
    struct Seq(u64);

    impl TryFrom<Answer> for Seq {
        type Error = Answer;

        fn try_from(answer: Answer) -> Result<Self, Answer> {
            match answer {
                Answer::Seq(seq) => Ok(Seq(seq)),
                other => Err(other),
            }
        }
    }

    type Table = Pending<Answer, &'static str>;

    #[test]
    fn a_waiting_task_gets_its_answer_and_frees_the_entry() {
        crate::sync::on_test_executor(async {
            let table = Table::new(2);
            let waiting = table.wait::<Seq>(1);
            assert_eq!((waiting.id().shard(), table.len()), (2, 1));
            assert_eq!(table.settle(waiting.id(), Answer::Seq(7)), None);
            assert_eq!(waiting.next().await, Some(Seq(7)));
            drop(waiting);
            assert!(table.is_empty());
        });
    }

    #[test]
    fn a_late_answer_after_giving_up_reaches_nobody() {
        crate::sync::on_test_executor(async {
            let table = Table::new(0);
            let given_up = table.wait::<Seq>(1).id();
            assert!(table.is_empty(), "freed when the wait was dropped");
            // The slot is taken again, under another generation.
            let waiting = table.wait::<Seq>(1);
            assert_ne!(waiting.id(), given_up);
            assert_eq!(table.settle(given_up, Answer::Seq(1)), None);
            table.settle(waiting.id(), Answer::Seq(2));
            assert_eq!(waiting.next().await, Some(Seq(2)), "not the late one");
            // Given up with a timeout, as the shard's waits are.
            let id = waiting.id();
            let waited = glommio::timer::timeout(Duration::from_millis(1), async {
                Ok(waiting.next().await)
            })
            .await;
            assert!(waited.is_err());
            drop(waiting);
            assert_eq!(table.settle(id, Answer::Seq(3)), None);
            assert!(table.is_empty());
        });
    }

    #[test]
    fn slots_are_reused() {
        crate::sync::on_test_executor(async {
            let table = Table::new(0);
            let first = table.wait::<Seq>(1);
            let second = table.note("second");
            let first_id = first.id();
            drop(first);
            let third = table.note("third");
            assert_eq!((third.slot(), third.shard()), (first_id.slot(), 0));
            assert_ne!(third, first_id);
            assert_eq!(table.len(), 2);
            assert_eq!(
                table.settle(first_id, Answer::Seq(1)),
                None,
                "not the note that took the slot"
            );
            assert_eq!(
                table.settle(third, Answer::Word("w")),
                Some(("third", Answer::Word("w")))
            );
            assert_eq!(
                table.settle(second, Answer::Seq(4)),
                Some(("second", Answer::Seq(4)))
            );
            assert!(table.is_empty(), "a noted question is freed by its answer");
            assert_eq!(table.settle(second, Answer::Seq(5)), None, "answered once");
        });
    }

    #[test]
    fn a_question_to_several_shards_collects_their_answers() {
        crate::sync::on_test_executor(async {
            let table = Table::new(0);
            let waiting = table.wait::<Seq>(3);
            for seq in [10, 11] {
                table.settle(waiting.id(), Answer::Seq(seq));
            }
            // Another kind of answer under the same id is not taken for one.
            table.settle(waiting.id(), Answer::Word("stray"));
            let mut got = Vec::new();
            waiting
                .collect_within(3, Duration::from_millis(5), |Seq(seq)| got.push(seq))
                .await;
            assert_eq!(got, [10, 11], "the third never came: the wait ended");
            // One more than asked for is dropped, not queued without bound.
            let two = table.wait::<Seq>(2);
            for seq in [1, 2, 3] {
                table.settle(two.id(), Answer::Seq(seq));
            }
            let mut got = Vec::new();
            two.collect_within(2, Duration::from_millis(5), |Seq(seq)| got.push(seq))
                .await;
            assert_eq!(got, [1, 2]);
        });
    }

    #[test]
    fn an_answer_for_another_shard_is_not_taken() {
        let table = Table::new(1);
        let note = table.note("mine");
        let elsewhere = ReplyId::new(0, note.slot(), note.generation());
        assert_eq!(table.settle(elsewhere, Answer::Seq(1)), None);
        assert_eq!(table.len(), 1);
    }
}
