//! What callers see: the response shapes of the contract, built from stored
//! profiles with the caller's field access applied.
//!
//! The field access itself (what is personal, and how it is masked) is
//! [`masking`](super::masking); its items are re-exported here so that
//! `views::Access` and the rest keep their paths.

mod card;
mod identity;
mod ingest;
mod personalization;
mod profile;

pub use super::masking::{mask, Access, FieldRules, Masking, MASKED_TEXT};
pub use card::{context_card, CardFollowUp, CardIdentifier, ContextCard, CARD_EPISODES};
pub use identity::{
    history_view, suggestion_view, HistoryEntry, HistoryPage, SuggestionView, UnmergeResult,
};
pub use ingest::{ignored_view, ConflictView, IgnoredView, IngestResult, NotStoredView};
pub use personalization::{offer_view, OfferView, PersonalizationView};
pub use profile::{
    answer_view, episode_view, interaction_view, ordered_episodes, profile_view, AnswerView,
    ChannelView, ConsentDecision, ConsentView, EpisodeView, FeedbackView, IdentifierView,
    InteractionView, JourneyView, ProfileView, StageView, TimelinePage, TraitView,
};
