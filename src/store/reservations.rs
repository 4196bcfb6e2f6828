//! Lab reservations' table (`reservations`): created whole after the overlap check in the same
//! write transaction, listed by the admin's API and by every scheduling pass that has jobs (a
//! handful of rows), deleted by name.

use super::{Store, StoreError};
use crate::domain::reservation::{first_overlap, Reservation};
use crate::domain::Timestamp;

/// Why a reservation was not stored.
#[derive(Debug, Clone, PartialEq)]
pub enum ReservationRefused {
    /// One by that name exists already.
    NameTaken,
    /// It overlaps this existing reservation on a shared device.
    Overlaps(Reservation),
}

/// One `reservations` row: name, devices (JSON), users (JSON), start, end, weekly.
type ReservationRow = (String, String, String, f64, f64, bool);

fn decode(row: ReservationRow) -> Result<Reservation, StoreError> {
    let (name, devices, users, start_at, end_at, weekly) = row;
    let corrupt = |column: &'static str, detail: String| StoreError::Corrupt { column, detail };
    let list = |column: &'static str, text: &str| {
        serde_json::from_str::<Vec<String>>(text).map_err(|err| corrupt(column, err.to_string()))
    };
    let time = |column: &'static str, seconds: f64| {
        Timestamp::from_unix_seconds(seconds).map_err(|err| corrupt(column, err.to_string()))
    };
    Ok(Reservation {
        devices: list("reservations.devices", &devices)?,
        users: list("reservations.users", &users)?,
        start: time("reservations.start_at", start_at)?,
        end: time("reservations.end_at", end_at)?,
        weekly,
        name,
    })
}

const COLUMNS: &str = "name, devices, users, start_at, end_at, weekly";

impl Store {
    /// Every reservation, by name.
    pub async fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        let rows: Vec<ReservationRow> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM reservations ORDER BY name")).fetch_all(&self.pool).await?;
        rows.into_iter().map(decode).collect()
    }

    /// Stores `reservation` unless its name is taken or it overlaps another on a shared device
    /// (`domain::reservation::first_overlap`), decided in the same write transaction as the
    /// insert, so two admins cannot both add overlapping ones.
    pub async fn create_reservation(
        &self,
        reservation: &Reservation,
        created_by: &str,
    ) -> Result<Result<(), ReservationRefused>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let rows: Vec<ReservationRow> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM reservations")).fetch_all(&mut *tx).await?;
        let existing = rows.into_iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        if existing.iter().any(|other| other.name == reservation.name) {
            return Ok(Err(ReservationRefused::NameTaken));
        }
        if let Some(other) = first_overlap(reservation, &existing) {
            return Ok(Err(ReservationRefused::Overlaps(other.clone())));
        }
        let json = |list: &[String]| serde_json::to_string(list).expect("a list of strings serializes");
        sqlx::query(
            "INSERT INTO reservations (name, devices, users, start_at, end_at, weekly, created_by, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&reservation.name)
        .bind(json(&reservation.devices))
        .bind(json(&reservation.users))
        .bind(reservation.start.unix_seconds())
        .bind(reservation.end.unix_seconds())
        .bind(reservation.weekly)
        .bind(created_by)
        .bind(super::unix_now())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Deletes the reservation `name`; false when there is none.
    pub async fn delete_reservation(&self, name: &str) -> Result<bool, StoreError> {
        let deleted = sqlx::query("DELETE FROM reservations WHERE name = ?").bind(name).execute(&self.pool).await?;
        Ok(deleted.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab(name: &str, device: &str, start: f64, weekly: bool) -> Reservation {
        Reservation {
            name: name.to_string(),
            devices: vec![device.to_string()],
            start: Timestamp::from_unix_seconds(start).unwrap(),
            end: Timestamp::from_unix_seconds(start + 7200.0).unwrap(),
            weekly,
            users: vec![String::from("alice"), String::from("bob")],
        }
    }

    #[tokio::test]
    async fn reservations_are_stored_whole_and_overlaps_and_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let tuesday = lab("lab-b", "gpu0", 1_796_738_400.0, true);
        assert_eq!(store.create_reservation(&tuesday, "admin").await.unwrap(), Ok(()));
        assert_eq!(store.reservations().await.unwrap(), std::slice::from_ref(&tuesday), "read back as written");
        // Three weeks later, an hour into the lab, on the same GPU.
        let clash = lab("exam", "gpu0", 1_796_738_400.0 + 3.0 * 604_800.0 + 3600.0, false);
        assert_eq!(
            store.create_reservation(&clash, "admin").await.unwrap(),
            Err(ReservationRefused::Overlaps(tuesday.clone()))
        );
        let same_name = lab("lab-b", "gpu1", 0.0, false);
        assert_eq!(store.create_reservation(&same_name, "admin").await.unwrap(), Err(ReservationRefused::NameTaken));
        assert_eq!(store.reservations().await.unwrap().len(), 1, "nothing stored on a refusal");
        let elsewhere = lab("exam", "gpu1", 1_796_738_400.0, false);
        assert_eq!(store.create_reservation(&elsewhere, "admin").await.unwrap(), Ok(()));
        assert!(store.delete_reservation("lab-b").await.unwrap());
        assert!(!store.delete_reservation("lab-b").await.unwrap(), "gone");
        assert_eq!(store.reservations().await.unwrap(), [elsewhere]);
    }
}
