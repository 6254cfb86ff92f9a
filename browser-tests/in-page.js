// What the WebRTC tests and benchmarks do inside their pages, loaded there with
// page.addInitScript({ path }): gathering an offer's candidates, and sending seed 004's frames.
window.ferryPeer = {
  /** Resolves once `pc` has gathered its candidates, so its description carries them. */
  gathered(pc) {
    return new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") resolve();
      pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && resolve();
    });
  },

  /**
   * Sends `total` frames `[index u32 LE][total u32 LE][payload(index)]` on `ch`, pausing while
   * more than 1 MiB is buffered; `before(index)` is awaited before each frame.
   */
  async sendFrames(ch, total, payload, before = async () => {}) {
    for (let i = 0; i < total; i++) {
      await before(i);
      // The event can fire before the handler is set: look again every few milliseconds too.
      while (ch.bufferedAmount > 1024 * 1024) {
        await new Promise((r) => { ch.onbufferedamountlow = r; setTimeout(r, 5); });
      }
      const p = payload(i);
      const msg = new Uint8Array(8 + p.length);
      const view = new DataView(msg.buffer);
      view.setUint32(0, i, true);
      view.setUint32(4, total, true);
      msg.set(p, 8);
      ch.send(msg);
    }
  },
};
