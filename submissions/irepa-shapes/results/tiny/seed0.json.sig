{
 "key": "8c406635d5fd3ff6",
 "signature": "TpHgQRq2mpoEw2S8GERkZUzGZ55ffKNMqUOGkWOS6rULnMx9pGyH603dhelXKr6+n42rxkZpDCuIHI/CWArvBQ=="
}
