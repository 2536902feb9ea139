// segment_slice: load a cmrsdk bundle's TorchScript U-Net with libtorch and segment slices.
//
//   segment_slice MODEL.pt INPUT OUTPUT [--shape H W] [--threads N]
//
// INPUT  float32 normalised slices on the bundle's grid, as cmrsdk's preprocessing makes them
//        (in-plane spacing and window of the manifest's "preprocessing", robust z-score):
//        a .npy of shape (H, W), (N, H, W) or (N, 1, H, W), C order, little-endian '<f4';
//        or a raw little-endian float32 file of N x H x W values with --shape H W.
// OUTPUT uint8 labels (0 background, 1 LVBP, 2 LVM, 3 RVBP): the argmax over the classes of
//        the model's probabilities, shape (N, H, W) (or (H, W) for an (H, W) input); .npy, or raw
//        bytes for any other suffix.
//
// Exit status 0 on success, 1 on bad input or a model that cannot be loaded or run (the
// message on stderr says which).
#include <ATen/Parallel.h>  // at::set_num_threads
#include <torch/script.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct Slices {
  std::vector<float> values;
  std::vector<int64_t> shape;  // as read: (H, W), (N, H, W) or (N, 1, H, W)
};

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open '" + path + "'");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A .npy file (format 1.0 to 3.0): magic, version, header length, a Python dict literal, data.
Slices read_npy(const std::string& path) {
  const std::string bytes = read_file(path);
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0)
    throw std::runtime_error("'" + path + "' is not a .npy file (no \\x93NUMPY magic)");
  const int major = static_cast<unsigned char>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(bytes[8]) | (static_cast<unsigned char>(bytes[9]) << 8);
    offset = 10;
  } else {
    if (bytes.size() < 12) throw std::runtime_error("'" + path + "': truncated .npy header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= static_cast<size_t>(static_cast<unsigned char>(bytes[8 + i])) << (8 * i);
    offset = 12;
  }
  if (bytes.size() < offset + header_len) throw std::runtime_error("'" + path + "': truncated .npy header");
  const std::string header = bytes.substr(offset, header_len);
  if (header.find("'descr': '<f4'") == std::string::npos)
    throw std::runtime_error("'" + path + "': dtype must be little-endian float32 ('<f4'), header is " + header);
  if (header.find("'fortran_order': False") == std::string::npos)
    throw std::runtime_error("'" + path + "': array must be in C order (fortran_order False)");
  const size_t open = header.find('(', header.find("'shape'"));
  const size_t close = header.find(')', open);
  if (open == std::string::npos || close == std::string::npos) throw std::runtime_error("'" + path + "': no shape in header");
  Slices out;
  std::stringstream dims(header.substr(open + 1, close - open - 1));
  std::string item;
  int64_t count = 1;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(" ") == std::string::npos) continue;
    out.shape.push_back(std::stoll(item));
    count *= out.shape.back();
  }
  const size_t data = offset + header_len;
  if (bytes.size() - data != static_cast<size_t>(count) * sizeof(float))
    throw std::runtime_error("'" + path + "': holds " + std::to_string(bytes.size() - data) + " data bytes, the shape needs " +
                             std::to_string(count * sizeof(float)));
  out.values.resize(count);
  std::memcpy(out.values.data(), bytes.data() + data, count * sizeof(float));
  return out;
}

Slices read_raw(const std::string& path, int64_t h, int64_t w) {
  const std::string bytes = read_file(path);
  const size_t slice = static_cast<size_t>(h * w) * sizeof(float);
  if (bytes.empty() || bytes.size() % slice != 0)
    throw std::runtime_error("'" + path + "': " + std::to_string(bytes.size()) + " bytes is not a whole number of " +
                             std::to_string(h) + " x " + std::to_string(w) + " float32 slices");
  Slices out;
  out.shape = {static_cast<int64_t>(bytes.size() / slice), h, w};
  out.values.resize(bytes.size() / sizeof(float));
  std::memcpy(out.values.data(), bytes.data(), bytes.size());
  return out;
}

void write_labels(const std::string& path, const at::Tensor& labels, const std::vector<int64_t>& shape) {
  std::ofstream out(path, std::ios::binary);
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
  if (ends_with(path, ".npy")) {
    std::string dims;
    for (int64_t d : shape) dims += std::to_string(d) + ", ";
    if (shape.size() > 1) dims.resize(dims.size() - 1);  // "(N, H, W)" but "(N,)" for one axis
    std::string header = "{'descr': '|u1', 'fortran_order': False, 'shape': (" + dims + "), }";
    header.append(64 - (10 + header.size() + 1) % 64, ' ');  // data starts on a 64-byte boundary
    header += '\n';
    const uint16_t len = static_cast<uint16_t>(header.size());
    out.write("\x93NUMPY\x01\x00", 8);
    out.put(static_cast<char>(len & 0xff));
    out.put(static_cast<char>(len >> 8));
    out << header;
  }
  out.write(reinterpret_cast<const char*>(labels.data_ptr<uint8_t>()), labels.numel());
  if (!out) throw std::runtime_error("cannot write '" + path + "'");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt INPUT(.npy|raw) OUTPUT(.npy|raw) [--shape H W] [--threads N]\n";
    return 1;
  }
  const std::string model_path = argv[1], input_path = argv[2], output_path = argv[3];
  int64_t h = 0, w = 0;
  int threads = 0;
  try {
    for (int i = 4; i < argc; ++i) {
      const std::string flag = argv[i];
      if (flag == "--shape" && i + 2 < argc) {
        h = std::stoll(argv[++i]);
        w = std::stoll(argv[++i]);
      } else if (flag == "--threads" && i + 1 < argc) {
        threads = std::stoi(argv[++i]);
      } else {
        throw std::runtime_error("unknown or incomplete option '" + flag + "'");
      }
    }
    Slices slices;
    if (ends_with(input_path, ".npy")) {
      slices = read_npy(input_path);
    } else {
      if (h <= 0 || w <= 0) throw std::runtime_error("a raw INPUT needs --shape H W (positive)");
      slices = read_raw(input_path, h, w);
    }
    const auto& s = slices.shape;
    const bool one = s.size() == 2;
    if (!(s.size() == 2 || s.size() == 3 || (s.size() == 4 && s[1] == 1)))
      throw std::runtime_error("INPUT must have shape (H, W), (N, H, W) or (N, 1, H, W)");
    const int64_t n = one ? 1 : s[0], height = s[s.size() - 2], width = s[s.size() - 1];
    // the U-Nets halve the image four times: other sizes fail deep inside the model
    if (n < 1 || height % 16 || width % 16 || height < 16 || width < 16)
      throw std::runtime_error("INPUT slices must be at least one, with height and width multiples of 16, got N=" +
                               std::to_string(n) + " H=" + std::to_string(height) + " W=" + std::to_string(width));
    if (threads > 0) at::set_num_threads(threads);

    torch::jit::Module model = torch::jit::load(model_path, torch::kCPU);
    model.eval();
    c10::InferenceMode guard;
    const at::Tensor batch = torch::from_blob(slices.values.data(), {n, 1, height, width}, torch::kFloat32);
    const at::Tensor probabilities = model.forward({batch}).toTensor();  // (N, C, H, W), softmax inside
    if (probabilities.dim() != 4 || probabilities.size(0) != n || probabilities.size(2) != height ||
        probabilities.size(3) != width)
      throw std::runtime_error("the model returned shape " + c10::str(probabilities.sizes()) +
                               ", expected (N, C, H, W): is it a segmentation model?");
    const at::Tensor labels = probabilities.argmax(1).to(torch::kUInt8).contiguous();
    std::vector<int64_t> shape = one ? std::vector<int64_t>{height, width} : std::vector<int64_t>{n, height, width};
    write_labels(output_path, labels, shape);
    std::cout << "segmented " << n << " slice(s) of " << height << " x " << width << " -> " << output_path << "\n";
  } catch (const c10::Error& e) {
    std::cerr << "error: libtorch: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
