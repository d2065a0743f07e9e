// Profiles: find a user, see their preferences, add and remove them (the /perg/profiles routes).

import { ApiError, api, segment } from "./api.js";
import { byId, h, message, replace, time } from "./dom.js";

let after = null;

export async function listProfiles(more = false) {
  if (!more) after = null;
  const page = await api("profiles", { query: { limit: 20, after } });
  const list = byId("profiles-list");
  if (!more) list.replaceChildren();
  list.append(
    ...page.data.map((profile) =>
      h("li", {}, h("button", { type: "button", class: "link", dataset: { user: profile.user_id }, onclick: () => openProfile(profile.user_id) }, profile.user_id), h("span", { class: "muted" }, ` ${profile.preferences.length} preference(s)`)),
    ),
  );
  after = page.last_id;
  byId("profiles-more").hidden = !page.has_more;
  if (!list.children.length) list.append(h("li", { class: "muted" }, "No stored profile yet."));
}

function preferenceItem(userId, preference) {
  return h(
    "li",
    { dataset: { id: preference.id } },
    h("span", { class: "pref-text" }, preference.text),
    h("span", { class: "muted small" }, ` ${preference.id} · ${time(preference.created_at, true)}`),
    h("button", { type: "button", class: "remove", title: "Remove this preference", onclick: () => edit(userId, { remove: [preference.id] }) }, "Remove"),
  );
}

function render(userId, profile) {
  const input = h("input", { id: "pref-new", type: "text", maxlength: 1000, placeholder: "a new preference, e.g. Answer in metric units", autocomplete: "off" });
  const form = h("form", { id: "pref-add", class: "inline" }, input, h("button", { type: "submit" }, "Add"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value.trim()) edit(userId, { add: [input.value.trim()] });
  });
  const preferences = profile ? profile.preferences : [];
  replace(
    byId("profile-detail"),
    h("h2", {}, `User ${userId}`),
    h("p", { class: "muted small" }, profile ? `updated ${time(profile.updated_at, true)}` : "No stored profile: adding a preference creates it."),
    preferences.length ? h("ol", { class: "prefs", id: "profile-prefs" }, preferences.map((p) => preferenceItem(userId, p))) : h("p", { class: "muted", id: "profile-prefs" }, "No preferences."),
    form,
    h("p", { id: "profile-status", class: "muted", role: "status" }),
  );
}

export async function openProfile(userId) {
  byId("profile-user").value = userId;
  try {
    render(userId, await api(`profiles/${segment(userId)}`));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) render(userId, null);
    else replace(byId("profile-detail"), h("p", { class: "error" }, message(error)));
  }
}

async function edit(userId, change) {
  try {
    const profile = await api(`profiles/${segment(userId)}`, { method: "PATCH", body: change });
    render(userId, profile);
    byId("profile-status").textContent = change.add ? "Preference added." : "Preference removed.";
    await listProfiles();
  } catch (error) {
    const status = byId("profile-status");
    if (status) status.textContent = message(error);
  }
}

export function setUpProfiles() {
  byId("profile-search").addEventListener("submit", (event) => {
    event.preventDefault();
    const userId = byId("profile-user").value.trim();
    if (userId) openProfile(userId);
  });
  byId("profiles-more").addEventListener("click", () => listProfiles(true));
}
