//! The budget check at submission: a job whose time limit its owner's device-hour budget could
//! not admit even with nothing else of theirs running is refused (422 naming `time_limit`)
//! rather than queued to wait for the period to roll over.

use super::{Submissions, SubmitError};
use crate::domain::budget::hours;
use crate::domain::sweep::Variant;
use crate::domain::user::User;
use crate::domain::SpecError;

impl Submissions<'_> {
    /// Refuses the submission if one of its jobs' limits exceeds what the user's budget has left
    /// after what they already used this period. One account read, none without budgets.
    pub(super) async fn check_budget(&self, user: &User, variants: &[Variant]) -> Result<(), SubmitError> {
        let Some(policy) = self.budgets else { return Ok(()) };
        if user.admin {
            return Ok(());
        }
        let Some(account) = policy.account_of(self.store, &user.name).await? else { return Ok(()) };
        for variant in variants {
            let limit = self.caps.time_limits.applied(variant.spec.time_limit);
            let seconds = policy.job_seconds(limit);
            if !account.could_ever_admit(seconds) {
                let left = (account.budget_seconds - account.used_seconds).max(0.0);
                let message = format!(
                    "this job may take up to {} h, but your budget has {} of {} {} left this period ({} used); \
                     give a time_limit of at most {} h, or ask an admin to raise your budget",
                    hours(seconds),
                    hours(left),
                    hours(account.budget_seconds),
                    account.class.unit(),
                    hours(account.used_seconds),
                    hours(left),
                );
                return Err(super::in_combination(variant, SpecError::new("time_limit", message).into()));
            }
        }
        Ok(())
    }
}
