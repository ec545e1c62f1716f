//! The tenants maintenance works on, read from the control plane.

use candor_lake::LakeError;

/// Every tenant document of the control plane. One that cannot be read is
/// logged and left out, so it does not stop maintenance of the others.
pub(crate) async fn all(
    docs: &candor_control::DocumentStore,
) -> Result<Vec<candor_control::Tenant>, LakeError> {
    use candor_control::documents::Kind;
    let ids = docs
        .ids(Kind::Tenant)
        .await
        .map_err(|e| LakeError::Control(e.to_string()))?;
    let mut all = Vec::new();
    for id in ids {
        match docs.get::<candor_control::Tenant>(Kind::Tenant, &id).await {
            Ok(Some(tenant)) => all.push(tenant.doc),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(tenant = %id, error = %e, "unreadable tenant document left out")
            }
        }
    }
    Ok(all)
}
