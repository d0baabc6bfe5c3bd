//! End to end from image files: a folder of grayscale 28x28 PNGs in three visibly different
//! classes, written here, loaded by lamb-data (1 channel) and trained with the seed CNN's stack
//! built for the data's shape and class count; test accuracy must be clearly above chance.

use image::{GrayImage, Luma};
use lamb_data::load;
use lamb_nn::{Activation, FitOptions, Padding, Sequential};
use lamb_optim::{Lamb, LambConfig};

/// A noisy 28x28 image of class `class`: 0 a horizontal bar, 1 a vertical bar, 2 a filled
/// square; position and noise vary with `seed`.
fn picture(class: usize, seed: u32) -> GrayImage {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(12_345);
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let off = (rnd() % 10) as i32 - 5;
    let noise: Vec<u8> = (0..784).map(|_| (rnd() % 60) as u8).collect();
    GrayImage::from_fn(28, 28, |x, y| {
        let (x, y) = (x as i32, y as i32);
        let on = match class {
            0 => (y - 14 - off).abs() <= 2 && (4..24).contains(&x),
            1 => (x - 14 - off).abs() <= 2 && (4..24).contains(&y),
            _ => (x - 14 - off).abs() <= 6 && (y - 14 + off).abs() <= 6,
        };
        let base = if on { 200 } else { 20 };
        Luma([base + noise[(y * 28 + x) as usize] / 2])
    })
}

#[test]
fn grayscale_png_folder_trains_above_chance() {
    let tmp = tempfile::tempdir().unwrap();
    let classes = ["bar-h", "bar-v", "square"];
    let mut seed = 0;
    for (split, n) in [("train", 60), ("test", 30)] {
        for (c, name) in classes.iter().enumerate() {
            let dir = tmp.path().join(split).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                seed += 1;
                picture(c, seed)
                    .save(dir.join(format!("{i:03}.png")))
                    .unwrap();
            }
        }
    }
    let data = load(tmp.path()).unwrap();
    let (train, test) = (data.train, data.test);
    assert_eq!((train.height, train.width, train.channels), (28, 28, 1));
    assert_eq!(train.class_names, classes.to_vec());
    assert_eq!((train.len(), test.len()), (180, 90));
    // The seed CNN's layers, for the data's shape and classes.
    let mut model = Sequential::new([train.height, train.width, train.channels])
        .conv2d(32, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .conv2d(64, 3, 1, Padding::Valid, Activation::Relu)
        .max_pool2d(2)
        .flatten()
        .dense(train.class_names.len(), Activation::Softmax)
        .build(0)
        .unwrap();
    let mut opt = Lamb::new(LambConfig {
        learning_rate: 1e-2,
        ..LambConfig::default()
    })
    .unwrap();
    let before = model.evaluate(&test, 90).unwrap();
    model
        .fit(
            &train,
            None,
            &FitOptions::new(20, 5, 0),
            &mut opt,
            &mut |_| Ok(()),
        )
        .unwrap();
    let after = model.evaluate(&test, 90).unwrap();
    eprintln!(
        "test accuracy {:.3} -> {:.3} (chance 0.333)",
        before.accuracy, after.accuracy
    );
    assert!(
        after.accuracy >= 0.8,
        "test accuracy {} after 5 epochs (chance 1/3)",
        after.accuracy
    );
}

#[test]
fn seed_cnn_follows_the_data_shape() {
    use lamb_nn::{classic_cnn, classic_cnn_for};
    // MNIST: 28x28x1 -> conv 26 -> pool 13 -> conv 11 -> pool 5 -> 5*5*64 -> 10.
    let m = classic_cnn_for([28, 28, 1], 10, Activation::Relu, 0).unwrap();
    assert_eq!(m.input_shape(), [28, 28, 1]);
    assert_eq!(
        m.param_count(),
        (9 * 32 + 32) + (9 * 32 * 64 + 64) + (5 * 5 * 64 * 10 + 10)
    );
    assert_eq!(
        classic_cnn(Activation::Relu, 0).unwrap().param_count(),
        classic_cnn_for([32, 32, 3], 10, Activation::Relu, 0)
            .unwrap()
            .param_count()
    );
    // Too small for two valid convolutions and pools: refused, not a panic.
    assert!(classic_cnn_for([5, 5, 1], 3, Activation::Relu, 0).is_err());
}
