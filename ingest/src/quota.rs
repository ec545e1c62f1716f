//! Quotas: token buckets per device (batches) and per tenant (events), so
//! one runaway agent or one tenant's backlog cannot take a node's capacity
//! from everyone else. Checked only after a batch's tag verified, so a
//! forged envelope cannot spend another device's or tenant's quota.
//!
//! Buckets are per node: with N ingest nodes behind a load balancer a
//! tenant gets up to N times its per-node rate.

use std::num::NonZeroU32;
use std::time::Duration;

use candor_schemas::TenantId;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

#[derive(Debug, Clone, Copy)]
pub struct QuotaConfig {
    /// Batches per second one device may send, sustained (0 = no limit).
    pub device_batches_per_s: u32,
    /// Batches a device may send at once, e.g. uploading after a day offline.
    pub device_burst: u32,
    /// Events per second one tenant may send to this node (0 = no limit).
    pub tenant_events_per_s: u32,
    /// Events a tenant may send at once; at least the events of one batch.
    pub tenant_burst: u32,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        Self {
            device_batches_per_s: 10,
            device_burst: 200,
            tenant_events_per_s: 200_000,
            tenant_burst: 2_000_000,
        }
    }
}

pub struct Quotas {
    device: Option<DefaultKeyedRateLimiter<String>>,
    tenant: Option<DefaultKeyedRateLimiter<TenantId>>,
    clock: DefaultClock,
}

/// Sustained rate and burst as a governor quota; `None` when turned off.
fn quota(per_s: u32, burst: u32) -> Option<Quota> {
    let per_s = NonZeroU32::new(per_s)?;
    Some(Quota::per_second(per_s).allow_burst(NonZeroU32::new(burst.max(per_s.get()))?))
}

impl Quotas {
    /// Refuses a tenant burst smaller than one batch: such a batch could
    /// never pass and its agent would retry forever.
    pub fn new(config: QuotaConfig, max_events_per_batch: usize) -> Result<Self, String> {
        if config.tenant_events_per_s > 0 && (config.tenant_burst as usize) < max_events_per_batch {
            return Err(format!(
                "tenant quota burst {} is below the {max_events_per_batch} events a batch may hold",
                config.tenant_burst
            ));
        }
        Ok(Self {
            device: quota(config.device_batches_per_s, config.device_burst)
                .map(DefaultKeyedRateLimiter::keyed),
            tenant: quota(config.tenant_events_per_s, config.tenant_burst)
                .map(DefaultKeyedRateLimiter::keyed),
            clock: DefaultClock::default(),
        })
    }

    /// Takes one batch from the device's bucket (key `tenant/device`), or
    /// says how long until it could.
    pub fn take_device_batch(&self, device_key: &String) -> Result<(), Duration> {
        match &self.device {
            None => Ok(()),
            Some(limiter) => limiter
                .check_key(device_key)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Takes `events` from the tenant's bucket, or says how long until it could.
    pub fn take_tenant_events(&self, tenant: &TenantId, events: usize) -> Result<(), Duration> {
        let (Some(limiter), Some(n)) = (
            &self.tenant,
            NonZeroU32::new(u32::try_from(events).unwrap_or(u32::MAX)),
        ) else {
            return Ok(());
        };
        match limiter.check_key_n(tenant, n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.now())),
            // More than the burst: `new` makes the burst hold any valid batch.
            Err(_) => Err(Duration::from_secs(1)),
        }
    }

    /// Drops buckets that are full again (their devices or tenants went
    /// quiet), so memory follows the active population, not every id ever seen.
    pub fn forget_idle(&self) {
        if let Some(l) = &self.device {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.tenant {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_past_its_burst_waits_and_others_do_not() {
        let q = Quotas::new(
            QuotaConfig {
                device_batches_per_s: 1,
                device_burst: 3,
                ..QuotaConfig::default()
            },
            10_000,
        )
        .unwrap();
        let (a, b) = ("acme/d1".to_string(), "acme/d2".to_string());
        for _ in 0..3 {
            q.take_device_batch(&a).unwrap();
        }
        let wait = q.take_device_batch(&a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        q.take_device_batch(&b).unwrap();
    }

    #[test]
    fn tenants_spend_events_and_zero_turns_a_quota_off() {
        let q = Quotas::new(
            QuotaConfig {
                device_batches_per_s: 0,
                tenant_events_per_s: 100,
                tenant_burst: 1_000,
                ..QuotaConfig::default()
            },
            1_000,
        )
        .unwrap();
        let acme = TenantId::new("acme").unwrap();
        q.take_tenant_events(&acme, 1_000).unwrap();
        assert!(q.take_tenant_events(&acme, 10).is_err());
        q.take_tenant_events(&TenantId::new("globex").unwrap(), 1_000)
            .unwrap();
        for _ in 0..1000 {
            q.take_device_batch(&"acme/d1".to_string()).unwrap();
        }
    }

    #[test]
    fn a_burst_smaller_than_a_batch_is_a_config_error() {
        let config = QuotaConfig {
            tenant_burst: 10,
            ..QuotaConfig::default()
        };
        assert!(Quotas::new(config, 10_000).is_err());
    }
}
