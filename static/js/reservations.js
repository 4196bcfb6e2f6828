// Lab reservations on the devices panel: under each device, the reservation under way on it or
// the next one, each with when (in UTC, as the server words it) and for whom. The admin makes them
// with `trainq admin reserve`; students see here why a device is kept.

import { el } from './dom.js';

/** The reservations line of one device card (`device.reservations` from GET /api/devices). */
export function deviceReservations(device) {
  const reservations = device.reservations ?? [];
  if (!reservations.length) return null;
  return el('ul', { class: 'device-reservations' }, ...reservations.map((reservation) =>
    el('li', { class: reservation.under_way ? 'reservation now' : 'reservation next', dataset: { reservation: reservation.name } },
      el('strong', {}, reservation.under_way ? 'Reserved now' : 'Reserved next'),
      ` for ${reservation.name}, ${reservation.when}${reservation.weekly ? ', weekly' : ''}`,
      el('span', { class: 'muted' }, ` (${reservation.users.join(', ')})`))));
}
