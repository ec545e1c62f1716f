//! Device enrollment and revocation.
//!
//! A device's key is derived from the master secret (WIRE.md), so nothing
//! secret is stored: the enrollment document records who the device belongs
//! to and its key version, and the tenant's revocation list records, per
//! device, the highest key version that no longer verifies. Ingest reads only
//! the revocation list (small: revoked devices only).

use std::collections::BTreeMap;

use candor_schemas::{DeviceId, EmployeeId, TenantId};
use serde::{Deserialize, Serialize};

/// A device's enrollment: `devices/<tenant>/<device>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceDoc {
    pub tenant: TenantId,
    pub device: DeviceId,
    pub employee: EmployeeId,
    pub key_version: u32,
    pub enrolled_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
}

impl DeviceDoc {
    pub fn doc_id(tenant: &TenantId, device: &DeviceId) -> String {
        format!("{tenant}/{device}")
    }

    pub fn is_active(&self) -> bool {
        self.revoked_at_ms.is_none()
    }
}

/// A tenant's revoked device key versions: `revocations/<tenant>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revocations {
    /// Device to the highest revoked key version: every version up to and
    /// including it is refused.
    pub devices: BTreeMap<DeviceId, u32>,
}

impl Revocations {
    pub fn is_revoked(&self, device: &DeviceId, key_version: u32) -> bool {
        self.devices
            .get(device)
            .is_some_and(|&through| key_version <= through)
    }

    pub fn revoke(&mut self, device: &DeviceId, through_version: u32) {
        let entry = self.devices.entry(device.clone()).or_insert(0);
        *entry = (*entry).max(through_version);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_covers_every_version_up_to_the_revoked_one() {
        let d = DeviceId::new("laptop-1").unwrap();
        let mut r = Revocations::default();
        assert!(!r.is_revoked(&d, 1));
        r.revoke(&d, 2);
        r.revoke(&d, 1); // never lowers
        assert!(r.is_revoked(&d, 1) && r.is_revoked(&d, 2));
        assert!(!r.is_revoked(&d, 3), "a re-enrolled device verifies again");
        assert!(!r.is_revoked(&DeviceId::new("other").unwrap(), 1));
    }
}
