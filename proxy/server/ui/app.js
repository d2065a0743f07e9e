// The operator page: sign in with the admin key, then three views over the admin JSON routes.

import { adminKey, api, signIn, signOut, whenSignedOut } from "./api.js";
import { byId, message, time } from "./dom.js";
import { listProfiles, setUpProfiles } from "./profiles.js";
import { showRobustness } from "./robustness.js";
import { listSamples, setUpSamples } from "./samples.js";

const VIEWS = ["robustness", "samples", "profiles"];
const REFRESH_MS = 30_000;
let view = "robustness";
let timer = null;

function showLogin(reason) {
  clearInterval(timer);
  byId("app").hidden = true;
  byId("login").hidden = false;
  byId("login-error").textContent = reason || "";
  byId("admin-key").focus();
}

async function refresh() {
  const status = byId("status");
  try {
    if (view === "robustness") {
      const process = await showRobustness(byId("window").value);
      status.textContent = `updated ${time(new Date().toISOString())} · process ${process.pid}`;
    } else if (view === "samples") {
      await listSamples();
      status.textContent = `updated ${time(new Date().toISOString())}`;
    } else {
      await listProfiles();
      status.textContent = `updated ${time(new Date().toISOString())}`;
    }
    status.classList.remove("error");
  } catch (error) {
    status.textContent = message(error);
    status.classList.add("error");
  }
}

function show(name) {
  view = name;
  for (const other of VIEWS) {
    byId(`view-${other}`).hidden = other !== name;
    byId(`tab-${other}`).setAttribute("aria-selected", String(other === name));
  }
  byId("window-control").hidden = name !== "robustness";
  refresh();
}

function start() {
  byId("login").hidden = true;
  byId("app").hidden = false;
  show(view);
  clearInterval(timer);
  timer = setInterval(() => view === "robustness" && refresh(), REFRESH_MS);
}

async function login(event) {
  event.preventDefault();
  const field = byId("admin-key");
  const key = field.value.trim();
  if (!key) return;
  signIn(key);
  try {
    await api("monitor/summary", { query: { window_seconds: 60 } });
  } catch (error) {
    signOut();
    byId("login-error").textContent = message(error);
    return;
  }
  field.value = "";
  start();
}

function setUp() {
  whenSignedOut((error) => showLogin(`Signed out: ${message(error)}`));
  byId("login-form").addEventListener("submit", login);
  byId("logout").addEventListener("click", () => {
    signOut();
    showLogin("Signed out.");
  });
  byId("refresh").addEventListener("click", refresh);
  byId("window").addEventListener("change", refresh);
  for (const name of VIEWS) byId(`tab-${name}`).addEventListener("click", () => show(name));
  setUpSamples();
  setUpProfiles();
  if (adminKey()) start();
  else showLogin();
}

setUp();
