// stream_engine/native/include/msync/runtime.h
//
// The native step runtime: an exported msync step model run with the ONNX Runtime C++ API.
//
// Shared vs per stream (sherpa-onnx's recognizer/stream split):
//   - StepModel is loaded once: the ORT session and the contract read from the model's metadata. It holds no
//     stream memory and can serve many StepStreams (ORT's Session::Run is thread-safe).
//   - StepStream owns the memory of B streams (B = 1 for a live client): two sets of state buffers that swap
//     roles every step (ping-pong: step k reads set k % 2 and writes set 1 - k % 2), an audio input buffer and a
//     landmarks output buffer, all bound once to two ORT IoBindings. A step copies nothing: the caller writes the
//     next samples into audio(), calls Step(), and reads landmarks().
//
// Usage:
//   msync::StepModel model("model.onnx");                 // throws ModelLoadError / ContractError
//   msync::StepStream stream(model);                      // batch 1, seed 0, the model's reference face
//   const auto& c = model.contract();
//   while (read(stream.audio(), c.samples_per_frame)) {   // float PCM in [-1, 1] at c.sample_rate_hz
//     stream.Step();
//     use(stream.landmarks());                            // c.num_landmarks x c.landmark_dims floats
//   }                                                     // (the first c.lookahead_frames are the reference face)
//
// ORT types stay out of this header (pimpl), so clients do not need the ORT headers.
#ifndef MSYNC_RUNTIME_H_
#define MSYNC_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "msync/contract.h"

namespace msync {

struct RuntimeOptions {
  int intra_op_threads = 1;  ///< 1 is best at B=1 on a shared machine (stack-facts §2)
  int inter_op_threads = 1;  ///< the step graph is sequential
  /// Non-empty: ORT writes a per-node profile to "<profile_prefix>_<timestamp>.json" (see StepModel::EndProfiling).
  std::string profile_prefix;
};

/// A loaded step model (shared, stateless per call).
class StepModel {
 public:
  /// Load `path`, read its contract and check the graph against it.
  /// Throws ModelLoadError (missing, unreadable or corrupt file, or an ORT library older than the headers) or
  /// ContractError (no contract, a malformed one, or a graph that does not honour it).
  explicit StepModel(const std::string& path, const RuntimeOptions& options = RuntimeOptions());
  ~StepModel();
  StepModel(const StepModel&) = delete;
  StepModel& operator=(const StepModel&) = delete;

  const StepContract& contract() const;
  const std::string& path() const;
  const RuntimeOptions& options() const;
  /// Stop profiling and return the profile file's path ("" when profiling was off).
  std::string EndProfiling();

  /// Version of the ONNX Runtime library loaded at run time, e.g. "1.31.1".
  static std::string OrtVersion();
  /// ORT_API_VERSION of the headers the runtime was compiled with.
  static int OrtHeaderApiVersion();

 private:
  friend class StepStream;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// How fresh streams start (the `init` of each state in the contract).
struct StreamInit {
  /// Seed of the "uniform(0,1)" states (the generator's noise source); see UniformFill.
  uint64_t seed = 0;
  /// Empty: the contract's reference face. Else num_landmarks * landmark_dims floats (every stream) or
  /// batch * num_landmarks * landmark_dims (one face per stream), row-major, in normalised crop coordinates
  /// (as the contract's face; pixels are refused with std::invalid_argument).
  std::vector<float> reference_face;
};

/// The state of B streams driven by one model, batch on axis 0 of every tensor.
class StepStream {
 public:
  /// Throws std::invalid_argument for batch < 1 or a reference face of the wrong size.
  StepStream(const StepModel& model, int64_t batch = 1, const StreamInit& init = StreamInit());
  ~StepStream();
  StepStream(const StepStream&) = delete;
  StepStream& operator=(const StepStream&) = delete;

  int64_t batch() const;
  /// (batch, samples_per_frame) input buffer: write the next step's samples here before Step(): float PCM in
  /// [-1, 1] at the contract's rate (Step() clips values beyond and refuses NaN/inf).
  float* audio();
  /// (batch, num_landmarks, landmark_dims) output of the last Step().
  const float* landmarks() const;
  /// Run one step: reads audio() and the current state, writes landmarks() and the next state.
  /// Throws std::invalid_argument (a NaN or infinite sample in any row of audio(): the step of every row is
  /// refused, audio() and the state unchanged) or
  /// std::runtime_error (ONNX Runtime failed). The StepModel must outlive every stream made from it.
  void Step();
  /// Forget everything: back to the initial state (new seed / face), step count 0.
  void Reset(const StreamInit& init = StreamInit());
  /// Steps run since construction or the last Reset.
  int64_t steps() const;

  /// Current value of state `i` (contract order), batch on axis 0; writable (e.g. to restore a saved stream).
  float* state(size_t i);
  const float* state(size_t i) const;
  /// Number of floats in state `i` for this batch.
  int64_t state_numel(size_t i) const;
  size_t num_states() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Fill dst[0..n) with uniform [0, 1) floats from a counter-based splitmix64 stream: value k is
/// float(splitmix64(seed + (counter + k + 1) * 0x9E3779B97F4A7C15) >> 40) / 2^24; *counter advances by n.
/// StepStream draws its "uniform(0,1)" states in contract order, row-major, from one counter starting at 0, so
/// any other runtime (stream_engine/native/tools/make_reference.py) can reproduce a seeded stream exactly.
void UniformFill(uint64_t seed, uint64_t* counter, float* dst, size_t n);

}  // namespace msync

#endif  // MSYNC_RUNTIME_H_
