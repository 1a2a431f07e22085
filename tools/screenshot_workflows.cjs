// Load each workflow into a running ComfyUI's frontend in headless Chromium, let its media load
// (and optionally run it), read every node's position and size off the canvas, and save a screenshot.
// Driven by tools/screenshot_workflows.py; needs playwright-core (NODE_PATH) and /usr/bin/chromium.
//
//   node tools/screenshot_workflows.cjs <comfyui url> <workflow.json,...> <out dir> [names to run,...]
const { chromium } = require("playwright-core");
const fs = require("fs");
const os = require("os");
const path = require("path");

const [url, files, outDir, runList] = process.argv.slice(2);
const toRun = new Set((runList || "").split(",").filter(Boolean));
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];
const VIEW = { width: 2400, height: 1350 };

async function mediaSettled(page, timeoutMs) {
  // every <video> has a frame and every <img> decoded (Load Video, Save Video, Preview Image previews)
  await page.waitForFunction(() => {
    const vids = [...document.querySelectorAll("video")];
    const imgs = [...document.querySelectorAll("img")];
    return vids.every((v) => v.readyState >= 2) && imgs.every((i) => i.complete);
  }, null, { timeout: timeoutMs, polling: 250 });
}

(async () => {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "rrdpo-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: FLAGS, viewport: VIEW,
  });
  const page = context.pages()[0] || (await context.newPage());
  const logs = [];
  page.on("console", (m) => logs.push(`${m.type()}: ${m.text()}`));
  await page.goto(url, { waitUntil: "load" });
  await page.waitForFunction(() => window.app && window.app.graph && window.app.canvas, null, { timeout: 120000 });
  await page.waitForTimeout(2000);
  await page.keyboard.press("Escape"); // the template browser, if it opened anyway
  const report = {};
  for (const file of files.split(",")) {
    const name = path.basename(file, ".json");
    const wf = JSON.parse(fs.readFileSync(file, "utf8"));
    const toastsBefore = logs.length;
    await page.evaluate(async (graph) => { await window.app.loadGraphData(graph); }, wf);
    await page.keyboard.press("Escape");
    await page.waitForTimeout(1500);
    let ran = null;
    if (toRun.has(name)) {
      ran = await page.evaluate(async () => {
        const before = Object.keys(await (await fetch("/history")).json()).length;
        await window.app.queuePrompt(0, 1);
        const t0 = Date.now();
        for (;;) {
          await new Promise((r) => setTimeout(r, 1000));
          const hist = await (await fetch("/history")).json();
          const entries = Object.values(hist);
          if (entries.length > before && entries.every((e) => e.status && e.status.completed !== undefined)) {
            const last = entries[entries.length - 1];
            return { status: last.status.status_str, seconds: (Date.now() - t0) / 1000 };
          }
          if (Date.now() - t0 > 900000) return { status: "timeout" };
        }
      });
      await page.waitForTimeout(2000);
    }
    await mediaSettled(page, 60000).catch(() => logs.push("media did not settle in 60 s"));
    await page.waitForTimeout(1500);
    const nodes = await page.evaluate(() => window.app.graph._nodes.map((n) => ({
      id: n.id, type: n.type, title: n.title, pos: [n.pos[0], n.pos[1]], size: [n.size[0], n.size[1]],
    })));
    // fit the whole graph into the view (the workflow's own ds is for a smaller screen)
    await page.evaluate((nodes) => {
      const c = window.app.canvas;
      const x0 = Math.min(...nodes.map((n) => n.pos[0])) - 40, y0 = Math.min(...nodes.map((n) => n.pos[1])) - 70;
      const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 40;
      const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 40;
      const rect = c.canvas.getBoundingClientRect();
      const scale = Math.min(rect.width / (x1 - x0), (rect.height - 40) / (y1 - y0));
      c.ds.scale = scale;
      c.ds.offset[0] = -x0;
      c.ds.offset[1] = -y0 + 20 / scale;
      c.setDirty(true, true);
    }, nodes);
    await page.waitForTimeout(1500);
    const toasts = await page.evaluate(() => [...document.querySelectorAll(".p-toast-message")].map((t) => t.innerText));
    await page.screenshot({ path: path.join(outDir, `${name}.png`) });
    report[name] = { nodes, toasts, ran, console: logs.slice(toastsBefore).filter((l) => /error|invalid|zod/i.test(l)) };
    await page.evaluate(() => document.querySelectorAll(".p-toast-message-close, .p-toast-icon-close").forEach((b) => b.click()));
  }
  fs.writeFileSync(path.join(outDir, "canvas_nodes.json"), JSON.stringify(report, null, 1));
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
})().catch((e) => { console.error(e); process.exit(1); });
